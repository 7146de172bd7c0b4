use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    let cli = wasmcdc::cli::Cli::parse();
    wasmcdc::cli::init_logging(&cli);
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
    let outcome = runtime.block_on(wasmcdc::cli::execute(cli, shutdown));
    // Dropping the runtime would wait for every blocking task (a read of stdin, a stuck client) forever.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
