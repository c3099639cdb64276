//! Policy TOML text: the compiler never panics; what it accepts survives the blob round
//! trip and always loads in the engine (the filter never refuses what `check` accepted).
#![no_main]

use claimgate_core::blob;
use claimgate_core::compile::compile;
use claimgate_core::engine::Engine;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Key files resolve to a small valid key set, or fail.
    let reader = |name: &str| {
        if name.ends_with(".json") {
            Ok(r#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"k","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#.to_owned())
        } else {
            Err("no such file".to_owned())
        }
    };
    let Ok(compiled) = compile(text, "fuzz.toml", &reader) else {
        return;
    };
    let (bytes, digest) = blob::encode(&compiled.policy).unwrap_or_else(|e| panic!("encode: {e}"));
    let (decoded, digest_again) =
        blob::decode(&bytes).unwrap_or_else(|e| panic!("decode of a compiled policy: {e}"));
    assert_eq!(decoded, compiled.policy);
    assert_eq!(digest, digest_again);
    if let Err(e) = Engine::new(decoded, digest) {
        panic!("a compiled policy does not load: {e}");
    }
});
