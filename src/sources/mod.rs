pub mod file;
pub mod socket;
