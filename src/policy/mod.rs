//! Policy: who may reach what (rules) and which addresses are reachable at
//! all (egress).

pub mod egress;
