//! The `kiln` binary. All of it lives in the library (`kiln::cli::main`), so the test
//! suite's server binary runs exactly this program.

fn main() -> std::process::ExitCode {
    kiln::cli::main()
}
