#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
//! Review 2 (attack on f546274): findings as failing tests, and probes that held.

use claimgate_core::blob;
use claimgate_core::compile::compile;
use sha2::{Digest, Sha256};

const POLICY: &str = r#"
version = 1
default = "deny"
[issuers.a]
issuer = "https://idp.example.com"
audiences = ["api"]
algorithms = ["HS256"]
hmac_secret = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
[[rules]]
name = "r"
paths = ["/x"]
allow = "authenticated"
"#;

fn compiled() -> claimgate_core::compiled::CompiledPolicy {
    compile(POLICY, "p.toml", &|_: &str| Err("no files".to_owned()))
        .unwrap_or_else(|e| panic!("{e:?}"))
        .policy
}

/// Re-seals a blob whose deflated payload is `deflated` (a correct digest for it).
fn reseal(blob: &[u8], deflated: &[u8]) -> Vec<u8> {
    let mut out = blob[..6].to_vec();
    out.extend_from_slice(&Sha256::digest(deflated));
    out.extend_from_slice(deflated);
    out
}

/// Finding: bytes after the DEFLATE stream's final block are ignored. The decoder refuses
/// trailing bytes after the postcard payload (`TrailingBytes`), but not after the deflate
/// stream: the same policy then decodes under any number of distinct digests (policy
/// versions), and junk appended to a blob passes unnoticed.
#[test]
fn bytes_after_the_final_deflate_block_are_refused() {
    let (blob, _) = blob::encode(&compiled()).unwrap();
    let mut deflated = blob[38..].to_vec();
    deflated.extend_from_slice(b"appended junk after the final block");
    let forged = reseal(&blob, &deflated);
    let result = blob::decode(&forged);
    assert!(
        result.is_err(),
        "a blob with junk after its deflate stream decoded as version {:?}",
        result.map(|(_, d)| d)
    );
}

mod hmac_probe {
    //! Probes that held: HMAC tags that are empty, truncated, extended or of another hash.
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use claimgate_core::engine::{Engine, RemoteKeys};
    use hmac::{KeyInit, Mac};

    const NOW: u64 = 1_800_000_000;

    fn engine() -> Engine {
        let (blob, _) = claimgate_core::blob::encode(&super::compiled()).unwrap();
        let (policy, digest) = claimgate_core::blob::decode(&blob).unwrap();
        Engine::new(policy, digest).unwrap()
    }

    fn token(alg: &str, tag: impl Fn(&[u8]) -> Vec<u8>) -> String {
        let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#));
        let payload = URL_SAFE_NO_PAD.encode(format!(
            r#"{{"iss":"https://idp.example.com","aud":"api","sub":"s","exp":{}}}"#,
            NOW + 60
        ));
        let input = format!("{header}.{payload}");
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(tag(input.as_bytes())))
    }

    fn mac(input: &[u8]) -> Vec<u8> {
        let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(&[0u8; 32]).unwrap();
        m.update(input);
        m.finalize().into_bytes().to_vec()
    }

    #[test]
    fn hmac_tags_other_than_the_full_one_are_refused() {
        let engine = engine();
        let ok = |t: &str| engine.authenticate(t, NOW, &RemoteKeys::default(), &mut None);
        assert!(
            ok(&token("HS256", mac)).is_ok(),
            "{:?}",
            ok(&token("HS256", mac))
        );
        for (what, t) in [
            ("empty", token("HS256", |_| vec![])),
            ("one byte", token("HS256", |i| mac(i)[..1].to_vec())),
            ("half", token("HS256", |i| mac(i)[..16].to_vec())),
            ("extended", token("HS256", |i| [mac(i), vec![0]].concat())),
            ("zeros", token("HS256", |_| vec![0; 32])),
            ("as HS512", token("HS512", mac)),
            ("as none", token("none", |_| vec![])),
        ] {
            assert!(ok(&t).is_err(), "{what} accepted");
        }
    }
}
