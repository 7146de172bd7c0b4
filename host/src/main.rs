use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    let cli = wasmcdc::cli::Cli::parse();
    wasmcdc::cli::init_logging();
    // Guest calls run on these threads: give them a stack well above wasmtime's max_wasm_stack.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(wasmcdc::transform::THREAD_STACK)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let shutdown = CancellationToken::new();
    runtime.spawn(wasmcdc::cli::shutdown_on_signal(shutdown.clone()));
    match runtime.block_on(wasmcdc::cli::execute(cli, shutdown)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
