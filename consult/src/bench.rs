//! The `bench` command: not built yet.

use clap::Args;

#[derive(Debug, Args)]
pub struct BenchArgs {}

pub async fn run(_args: BenchArgs) -> Result<(), Box<dyn std::error::Error>> {
    Err("bench is not built yet".into())
}
