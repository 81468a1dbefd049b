#![doc = include_str!("../README.md")]
// docs.rs (all features) marks what needs a feature.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod fixture;
pub mod proxy;
pub mod s3;

#[cfg(feature = "object-store")]
pub mod faults;
