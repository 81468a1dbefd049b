#![doc = include_str!("../README.md")]

pub mod blob;
mod compression;
pub mod crypt;
mod error;
pub mod index;
pub mod keyfile;
pub mod manifest;

pub use error::{Error, Format, Result};
