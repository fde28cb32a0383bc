//! Host-side tools for tmem appliances: a pipelining protocol client, page corpora, the verifying
//! benchmark (against an appliance or, for comparison, memcached), and stats reporting.

pub mod bench;
pub mod client;
pub mod conformance;
pub mod corpus;
pub mod kclient_view;
pub mod memcached;
pub mod secure;
pub mod stats;
