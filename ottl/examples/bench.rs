//! The `selfops-bench ottl` benchmark, runnable without building the agent.

#[path = "../../bench/src/ottl.rs"]
mod ottl;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    ottl::run()
}
