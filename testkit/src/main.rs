//! `claimgate-testkit`: signing keys and tokens for tests and the demo. Never for production.
//!
//! - `keygen ALG KID DIR`: writes `DIR/KID.key.pem` (private) and `DIR/KID.jwks.json` (public)
//! - `mint ALG KID DIR CLAIMS_JSON [HEADER_JSON]`: prints a signed token. `CLAIMS_JSON` is the
//!   whole payload; `HEADER_JSON` adds header fields (`kid` defaults to KID; `"kid": null`
//!   leaves it out).

use std::path::Path;
use std::process::ExitCode;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jwt_simple::prelude::*;
use serde_json::{Map, Value};

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("claimgate-testkit: {message}");
    ExitCode::from(1)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["keygen", alg, kid, dir] => keygen(alg, kid, Path::new(dir)),
        ["mint", alg, kid, dir, claims] => mint(alg, kid, Path::new(dir), claims, "{}"),
        ["mint", alg, kid, dir, claims, header] => mint(alg, kid, Path::new(dir), claims, header),
        _ => Err("usage: claimgate-testkit keygen ALG KID DIR | mint ALG KID DIR CLAIMS_JSON [HEADER_JSON]".to_owned()),
    };
    match result {
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

fn io(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn public_jwk(alg: &str, kid: &str, pem: &str) -> Result<Value, String> {
    let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
    let jwk = match alg {
        "RS256" | "RS384" | "RS512" | "PS256" | "PS384" | "PS512" => {
            let key = RS256KeyPair::from_pem(pem).map_err(io)?;
            let c = key.public_key().to_components();
            serde_json::json!({"kty": "RSA", "n": b64(&c.n), "e": b64(&c.e)})
        }
        "ES256" => {
            let key = ES256KeyPair::from_pem(pem).map_err(io)?;
            let point = key.public_key().public_key().to_bytes_uncompressed();
            serde_json::json!({"kty": "EC", "crv": "P-256", "x": b64(point.get(1..33).unwrap_or_default()), "y": b64(point.get(33..).unwrap_or_default())})
        }
        "ES384" => {
            let key = ES384KeyPair::from_pem(pem).map_err(io)?;
            let point = key.public_key().public_key().to_bytes_uncompressed();
            serde_json::json!({"kty": "EC", "crv": "P-384", "x": b64(point.get(1..49).unwrap_or_default()), "y": b64(point.get(49..).unwrap_or_default())})
        }
        "EdDSA" => {
            let key = Ed25519KeyPair::from_pem(pem).map_err(io)?;
            serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": b64(&key.public_key().to_bytes())})
        }
        other => return Err(format!("unsupported algorithm {other}")),
    };
    let mut jwk = jwk;
    if let Some(map) = jwk.as_object_mut() {
        map.insert("kid".into(), kid.into());
        map.insert("alg".into(), alg.into());
        map.insert("use".into(), "sig".into());
    }
    Ok(jwk)
}

fn keygen(alg: &str, kid: &str, dir: &Path) -> Result<String, String> {
    std::fs::create_dir_all(dir).map_err(io)?;
    let pem = match alg {
        "RS256" | "RS384" | "RS512" | "PS256" | "PS384" | "PS512" => RS256KeyPair::generate(2048)
            .map_err(io)?
            .to_pem()
            .map_err(io)?,
        "ES256" => ES256KeyPair::generate().to_pem().map_err(io)?,
        "ES384" => ES384KeyPair::generate().to_pem().map_err(io)?,
        "EdDSA" => Ed25519KeyPair::generate().to_pem(),
        other => return Err(format!("unsupported algorithm {other}")),
    };
    let jwks = serde_json::json!({"keys": [public_jwk(alg, kid, &pem)?]});
    std::fs::write(dir.join(format!("{kid}.key.pem")), &pem).map_err(io)?;
    let path = dir.join(format!("{kid}.jwks.json"));
    std::fs::write(&path, serde_json::to_string_pretty(&jwks).map_err(io)?).map_err(io)?;
    Ok(path.display().to_string())
}

/// Mints a token: the payload is the claims JSON as given (registered claims must have
/// their standard types; malformed tokens are made by editing a minted one).
fn mint(alg: &str, kid: &str, dir: &Path, claims: &str, header: &str) -> Result<String, String> {
    let pem = std::fs::read_to_string(dir.join(format!("{kid}.key.pem"))).map_err(io)?;
    let claims: JWTClaims<Map<String, Value>> =
        serde_json::from_str(claims).map_err(|e| format!("claims: {e}"))?;
    let extra: Map<String, Value> =
        serde_json::from_str(header).map_err(|e| format!("header: {e}"))?;
    let key_id = match extra.get("kid") {
        Some(Value::Null) => None,
        Some(Value::String(other)) => Some(other.as_str()),
        _ => Some(kid),
    };
    let options = HeaderOptions {
        signature_type: extra.get("typ").and_then(Value::as_str).map(str::to_owned),
        content_type: None,
    };
    macro_rules! sign_with {
        ($pair:ty) => {{
            let mut pair = <$pair>::from_pem(&pem).map_err(io)?;
            if let Some(id) = key_id {
                pair = pair.with_key_id(id);
            }
            pair.sign_with_options(claims, &options).map_err(io)
        }};
    }
    match alg {
        "RS256" => sign_with!(RS256KeyPair),
        "RS384" => sign_with!(RS384KeyPair),
        "RS512" => sign_with!(RS512KeyPair),
        "PS256" => sign_with!(PS256KeyPair),
        "PS384" => sign_with!(PS384KeyPair),
        "PS512" => sign_with!(PS512KeyPair),
        "ES256" => sign_with!(ES256KeyPair),
        "ES384" => sign_with!(ES384KeyPair),
        "EdDSA" => sign_with!(Ed25519KeyPair),
        other => Err(format!("unsupported algorithm {other}")),
    }
}
