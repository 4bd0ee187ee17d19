pub mod engineio;
pub mod wire;
