//! DNS for clients: raw queries arriving in DNS frames are answered through
//! hickory-resolver (configured upstreams, or the system's), with its cache.
//!
//! The client forwards the app's query bytes unchanged; the exit answers with a response
//! message carrying the same id and question, so the client can inject it as a reply from
//! the address the app asked. Failures become SERVFAIL, never silence, so apps do not wait
//! for their own timeout.

use std::net::{IpAddr, SocketAddr};

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::{ResolveError, TokioResolver};

use crate::config::DnsConfig;

/// The resolver could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DnsError {
    /// The system resolver configuration is unreadable.
    #[error("cannot read the system resolver configuration: {0}")]
    SystemConfig(ResolveError),
    /// A name could not be resolved.
    #[error("cannot resolve {name}: {source}")]
    Lookup { name: String, source: ResolveError },
}

/// Answers client DNS queries and resolves destination names.
#[derive(Debug, Clone)]
pub struct Dns {
    resolver: TokioResolver,
}

impl Dns {
    /// A resolver for `config`: its upstreams (UDP with TCP fallback), or the system's.
    pub fn new(config: &DnsConfig) -> Result<Dns, DnsError> {
        let mut builder = if config.upstreams.is_empty() {
            TokioResolver::builder_tokio().map_err(DnsError::SystemConfig)?
        } else {
            TokioResolver::builder_with_config(
                upstreams(&config.upstreams),
                TokioConnectionProvider::default(),
            )
        };
        let opts: &mut ResolverOpts = builder.options_mut();
        opts.cache_size = config.cache_size;
        opts.timeout = config.timeout;
        opts.attempts = 2;
        // Both families, so the dialer can race them (happy eyeballs).
        opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        Ok(Dns {
            resolver: builder.build(),
        })
    }

    /// Resolve a destination host name to addresses (both families).
    pub async fn lookup_ip(&self, host: &str) -> Result<Vec<IpAddr>, DnsError> {
        let lookup = self.resolver.lookup_ip(host).await;
        let lookup = lookup.map_err(|source| DnsError::Lookup {
            name: host.to_owned(),
            source,
        })?;
        Ok(lookup.iter().collect())
    }

    /// Answer one raw DNS query. `None` when the bytes are not a DNS query at all (there is
    /// no id to answer to); otherwise always a response.
    pub async fn answer(&self, query: &[u8]) -> Option<Vec<u8>> {
        let request = Message::from_vec(query).ok()?;
        if request.message_type() != MessageType::Query {
            return None;
        }
        let mut response = response_to(&request);
        match single_question(&request) {
            Some((name, rtype)) => self.fill(&mut response, name, rtype).await,
            None => {
                response.set_response_code(if request.op_code() == OpCode::Query {
                    ResponseCode::FormErr
                } else {
                    ResponseCode::NotImp
                });
            }
        }
        response.to_vec().ok()
    }

    async fn fill(&self, response: &mut Message, name: Name, rtype: RecordType) {
        match self.resolver.lookup(name, rtype).await {
            Ok(lookup) => {
                response.add_answers(lookup.records().iter().cloned());
            }
            Err(e) if e.is_no_records_found() => {
                let code = if e.is_nx_domain() {
                    ResponseCode::NXDomain
                } else {
                    ResponseCode::NoError
                };
                response.set_response_code(code);
                if let Some(soa) = e.into_soa() {
                    response.add_name_server(soa.into_record_of_rdata());
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "upstream DNS failure");
                response.set_response_code(ResponseCode::ServFail);
            }
        }
    }
}

fn upstreams(addrs: &[SocketAddr]) -> ResolverConfig {
    let mut config = ResolverConfig::new();
    for &addr in addrs {
        config.add_name_server(NameServerConfig::new(addr, Protocol::Udp));
        config.add_name_server(NameServerConfig::new(addr, Protocol::Tcp));
    }
    config
}

/// A response skeleton: same id, opcode, question and RD bit; RA set.
fn response_to(request: &Message) -> Message {
    let mut response = Message::new();
    response
        .set_id(request.id())
        .set_message_type(MessageType::Response)
        .set_op_code(request.op_code())
        .set_recursion_desired(request.recursion_desired())
        .set_recursion_available(true)
        .add_queries(request.queries().iter().cloned());
    response
}

/// The one question of a standard query; anything else is answered FORMERR/NOTIMP.
fn single_question(request: &Message) -> Option<(Name, RecordType)> {
    match (request.op_code(), request.queries()) {
        (OpCode::Query, [q]) => Some((q.name().clone(), q.query_type())),
        _ => None,
    }
}

#[cfg(test)]
pub(crate) mod tests;
