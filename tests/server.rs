//! The `kiln` program, for the black-box tests (see Cargo.toml).

fn main() -> std::process::ExitCode {
    kiln::cli::main()
}
