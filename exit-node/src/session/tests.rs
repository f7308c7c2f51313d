//! Session layer tests.
