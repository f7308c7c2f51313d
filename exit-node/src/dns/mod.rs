//! DNS for clients: raw queries arriving in DNS frames are answered through
//! hickory-resolver (configured upstreams, or the system's), with its cache.
//!
//! The client forwards the app's query bytes unchanged; the exit answers with a response
//! message carrying the same id and question, so the client can inject it as a reply from
//! the address the app asked. The upstream's outcome is passed on as it is: an answer, an
//! empty NOERROR (no records of that type) or NXDOMAIN; every failure (SERVFAIL, REFUSED,
//! any other error code, a timeout) becomes SERVFAIL — never an empty NOERROR, which an app
//! would take for "this name has no address", and never silence, so apps do not wait for
//! their own timeout.
//!
//! Clients see the public DNS only: the exit's own `/etc/hosts`, its search domains and
//! `ndots` are never applied to their names.

use std::net::{IpAddr, SocketAddr};

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::ProtoErrorKind;
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

/// Client DNS queries one session may have waiting for the upstream; more are answered
/// SERVFAIL at once (a flood of names towards a silent domain must not pile up).
pub const MAX_QUERIES_PER_SESSION: usize = 64;

/// The node-wide cap on client DNS queries waiting for the upstream, for a descriptor
/// `reserve` (the resolver's sockets come out of the reserve, never out of the sessions'
/// destination sockets).
pub fn max_queries_per_node(reserve: u64) -> usize {
    usize::try_from(reserve / 2)
        .unwrap_or(usize::MAX)
        .clamp(16, 1024)
}

/// A SERVFAIL answer to `query` (same id and question); `None` when the bytes are not a
/// DNS query (there is no id to answer to).
pub fn servfail(query: &[u8]) -> Option<Vec<u8>> {
    let request = Message::from_vec(query).ok()?;
    if request.message_type() != MessageType::Query {
        return None;
    }
    let mut response = response_to(&request);
    response.set_response_code(ResponseCode::ServFail);
    response.to_vec().ok()
}

/// Answers client DNS queries and resolves destination names.
#[derive(Debug, Clone)]
pub struct Dns {
    resolver: TokioResolver,
}

impl Dns {
    /// A resolver for `config`: its upstreams (UDP with TCP fallback), or the system's.
    pub fn new(config: &DnsConfig) -> Result<Dns, DnsError> {
        let servers = if config.upstreams.is_empty() {
            // Only the system's name servers: its search domains stay the exit's own.
            let (system, _) = hickory_resolver::system_conf::read_system_conf()
                .map_err(DnsError::SystemConfig)?;
            ResolverConfig::from_parts(None, vec![], system.name_servers().to_vec())
        } else {
            upstreams(&config.upstreams)
        };
        let mut builder =
            TokioResolver::builder_with_config(servers, TokioConnectionProvider::default());
        let opts: &mut ResolverOpts = builder.options_mut();
        // Names come from clients: never the exit's /etc/hosts, never a search suffix.
        opts.use_hosts_file = ResolveHosts::Never;
        opts.ndots = 0;
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
        // Fully qualified: a client's "intranet" is not looked up under the exit's domain.
        let name = Name::from_ascii(host)
            .map(|mut n| {
                n.set_fqdn(true);
                n
            })
            .map_err(|e| DnsError::Lookup {
                name: host.to_owned(),
                source: e.into(),
            })?;
        let lookup = self.resolver.lookup_ip(name).await;
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
            Err(e) => match negative_answer(&e) {
                // NXDOMAIN or NODATA: the name's real state, with the SOA for caching.
                Some(code) => {
                    response.set_response_code(code);
                    if let Some(soa) = e.into_soa() {
                        response.add_name_server(soa.into_record_of_rdata());
                    }
                }
                None => {
                    tracing::debug!(error = %e, "upstream DNS failure");
                    response.set_response_code(ResponseCode::ServFail);
                }
            },
        }
    }
}

/// The code of an upstream answer that says something about the name: NXDOMAIN, or
/// NOERROR without records (NODATA). `None` for failures: hickory reports SERVFAIL, REFUSED
/// and the other error codes as "no records found" too, with the code they came with.
fn negative_answer(e: &ResolveError) -> Option<ResponseCode> {
    match e.proto()?.kind() {
        ProtoErrorKind::NoRecordsFound { response_code, .. }
            if matches!(
                response_code,
                ResponseCode::NXDomain | ResponseCode::NoError
            ) =>
        {
            Some(*response_code)
        }
        _ => None,
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
