//! Prints the scale benchmarks' policy of N rules (default 10,000) as TOML, for
//! `claimgate compile` and through-Envoy runs:
//! `cargo run --release -p claimgate-core --example gen_policy -- 100000 > scale.toml`.
//! Its issuer signs with HS256 and the secret `[0x2a; 32]`; a caller of tenant `t` holds the
//! role `t<t>.model.fraud.invoke` and the claim `tenant = "t<t>"` (see the module's docs).

#[path = "../benches/support/policy_gen.rs"]
mod policy_gen;

use std::process::ExitCode;

fn main() -> ExitCode {
    let rules = match std::env::args()
        .nth(1)
        .map(|n| n.replace('_', "").parse::<usize>())
    {
        None => 10_000,
        Some(Ok(n)) if n >= policy_gen::GLOBAL_RULES => n,
        Some(_) => {
            eprintln!("usage: gen_policy [RULES >= {}]", policy_gen::GLOBAL_RULES);
            return ExitCode::FAILURE;
        }
    };
    print!("{}", policy_gen::policy_toml(rules));
    ExitCode::SUCCESS
}
