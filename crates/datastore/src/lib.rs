//! The object model of a PBS-compatible backup datastore.
//!
//! So far: [`prune`], PBS's retention rules as a pure function with a reason for every mark.

pub mod prune;
