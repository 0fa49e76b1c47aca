//! Policy: who may reach what (rules) and which addresses are reachable at
//! all (egress).

pub mod cidr_set;
pub mod egress;
pub mod explain;
pub mod rules;

pub use rules::{Action, Decision, Policy, Query};
