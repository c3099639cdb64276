//! `claimgate`: the policy compiler CLI. All logic lives in the library.

fn main() -> std::process::ExitCode {
    policy_compiler::run(std::env::args_os())
}
