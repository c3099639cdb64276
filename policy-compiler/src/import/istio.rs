//! The Istio resources `import` reads, as typed structures that refuse every field the
//! security.istio.io CRDs (v1 and v1beta1 share one schema) do not define: a misspelt or
//! newer field is an error, never silently ignored (an ignored `notPaths` would widen).
//!
//! Field names and shapes follow `requestauthentications.crd.yaml` and
//! `authorizationpolicies.crd.yaml` (istio/api); the unit test `fields_match_the_crds` checks
//! them against the CRD files when they are present beside the repository.

use std::collections::BTreeMap;

use serde::Deserialize;

/// `metadata` (only what the translation uses; the rest of Kubernetes' object metadata is
/// accepted and ignored, as it never changes what a policy means).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Metadata {
    /// `metadata.name`.
    #[serde(default)]
    pub name: Option<String>,
    /// `metadata.namespace`.
    #[serde(default)]
    pub namespace: Option<String>,
}

/// `spec.selector`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Selector {
    /// `matchLabels`.
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

/// `spec.targetRef` / `spec.targetRefs[]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetRef {
    /// `group`.
    #[serde(default)]
    pub group: Option<String>,
    /// `kind`.
    #[serde(default)]
    pub kind: Option<String>,
    /// `name`.
    #[serde(default)]
    pub name: Option<String>,
    /// `namespace`.
    #[serde(default)]
    pub namespace: Option<String>,
}

/// `RequestAuthentication.spec`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RequestAuthenticationSpec {
    /// `selector`.
    #[serde(default)]
    pub selector: Option<Selector>,
    /// `targetRef`.
    #[serde(default)]
    pub target_ref: Option<TargetRef>,
    /// `targetRefs`.
    #[serde(default)]
    pub target_refs: Vec<TargetRef>,
    /// `jwtRules`.
    #[serde(default)]
    pub jwt_rules: Vec<JwtRule>,
}

/// One `jwtRules` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct JwtRule {
    /// `issuer`.
    #[serde(default)]
    pub issuer: String,
    /// `audiences`.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// `jwksUri`.
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// `jwks_uri` (the CRD's deprecated spelling).
    #[serde(default, rename = "jwks_uri")]
    pub jwks_uri_snake: Option<String>,
    /// `jwks` (inline key set).
    #[serde(default)]
    pub jwks: Option<String>,
    /// `fromHeaders`.
    #[serde(default)]
    pub from_headers: Vec<JwtHeader>,
    /// `fromParams`.
    #[serde(default)]
    pub from_params: Vec<String>,
    /// `fromCookies`.
    #[serde(default)]
    pub from_cookies: Vec<String>,
    /// `outputPayloadToHeader`.
    #[serde(default)]
    pub output_payload_to_header: Option<String>,
    /// `forwardOriginalToken` (default false).
    #[serde(default)]
    pub forward_original_token: bool,
    /// `outputClaimToHeaders`.
    #[serde(default)]
    pub output_claim_to_headers: Vec<ClaimToHeader>,
    /// `spaceDelimitedClaims`.
    #[serde(default)]
    pub space_delimited_claims: Vec<String>,
    /// `timeout` (of the key set fetch).
    #[serde(default)]
    pub timeout: Option<String>,
}

/// `fromHeaders[]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtHeader {
    /// `name`.
    pub name: String,
    /// `prefix` (default: none, the header holds the token alone).
    #[serde(default)]
    pub prefix: String,
}

/// `outputClaimToHeaders[]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimToHeader {
    /// `header`.
    pub header: String,
    /// `claim`.
    pub claim: String,
}

/// `AuthorizationPolicy.spec`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthorizationPolicySpec {
    /// `selector`.
    #[serde(default)]
    pub selector: Option<Selector>,
    /// `targetRef`.
    #[serde(default)]
    pub target_ref: Option<TargetRef>,
    /// `targetRefs`.
    #[serde(default)]
    pub target_refs: Vec<TargetRef>,
    /// `action` (default ALLOW).
    #[serde(default)]
    pub action: Action,
    /// `provider` (CUSTOM only).
    #[serde(default)]
    pub provider: Option<Provider>,
    /// `rules`.
    #[serde(default)]
    pub rules: Vec<Rule>,
}

/// `action`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum Action {
    /// ALLOW (the default).
    #[default]
    #[serde(rename = "ALLOW")]
    Allow,
    /// DENY.
    #[serde(rename = "DENY")]
    Deny,
    /// AUDIT.
    #[serde(rename = "AUDIT")]
    Audit,
    /// CUSTOM (an external authorizer).
    #[serde(rename = "CUSTOM")]
    Custom,
}

/// `provider`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provider {
    /// `name`.
    #[serde(default)]
    pub name: Option<String>,
}

/// One `rules` entry.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// `from`.
    #[serde(default)]
    pub from: Vec<From>,
    /// `to`.
    #[serde(default)]
    pub to: Vec<To>,
    /// `when`.
    #[serde(default)]
    pub when: Vec<Condition>,
}

/// One `from` entry.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct From {
    /// `source`.
    #[serde(default)]
    pub source: Option<Source>,
}

/// `from[].source`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Source {
    /// `principals` (mTLS peer identities).
    #[serde(default)]
    pub principals: Vec<String>,
    /// `notPrincipals`.
    #[serde(default)]
    pub not_principals: Vec<String>,
    /// `requestPrincipals` (`iss/sub` of the verified JWT).
    #[serde(default)]
    pub request_principals: Vec<String>,
    /// `notRequestPrincipals`.
    #[serde(default)]
    pub not_request_principals: Vec<String>,
    /// `namespaces`.
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// `notNamespaces`.
    #[serde(default)]
    pub not_namespaces: Vec<String>,
    /// `ipBlocks`.
    #[serde(default)]
    pub ip_blocks: Vec<String>,
    /// `notIpBlocks`.
    #[serde(default)]
    pub not_ip_blocks: Vec<String>,
    /// `remoteIpBlocks`.
    #[serde(default)]
    pub remote_ip_blocks: Vec<String>,
    /// `notRemoteIpBlocks`.
    #[serde(default)]
    pub not_remote_ip_blocks: Vec<String>,
    /// `serviceAccounts`.
    #[serde(default)]
    pub service_accounts: Vec<String>,
    /// `notServiceAccounts`.
    #[serde(default)]
    pub not_service_accounts: Vec<String>,
    /// `trustDomains`.
    #[serde(default)]
    pub trust_domains: Vec<String>,
    /// `notTrustDomains`.
    #[serde(default)]
    pub not_trust_domains: Vec<String>,
}

impl Source {
    /// The peer (mTLS / network) fields claimgate cannot see, with their YAML names and
    /// whether each is a negative (`not…`) field.
    pub fn peer_fields(&self) -> [(&'static str, bool, &[String]); 12] {
        [
            ("principals", false, &self.principals),
            ("notPrincipals", true, &self.not_principals),
            ("namespaces", false, &self.namespaces),
            ("notNamespaces", true, &self.not_namespaces),
            ("ipBlocks", false, &self.ip_blocks),
            ("notIpBlocks", true, &self.not_ip_blocks),
            ("remoteIpBlocks", false, &self.remote_ip_blocks),
            ("notRemoteIpBlocks", true, &self.not_remote_ip_blocks),
            ("serviceAccounts", false, &self.service_accounts),
            ("notServiceAccounts", true, &self.not_service_accounts),
            ("trustDomains", false, &self.trust_domains),
            ("notTrustDomains", true, &self.not_trust_domains),
        ]
    }
}

/// One `to` entry.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct To {
    /// `operation`.
    #[serde(default)]
    pub operation: Option<Operation>,
}

/// `to[].operation`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Operation {
    /// `hosts`.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// `notHosts`.
    #[serde(default)]
    pub not_hosts: Vec<String>,
    /// `ports`.
    #[serde(default)]
    pub ports: Vec<String>,
    /// `notPorts`.
    #[serde(default)]
    pub not_ports: Vec<String>,
    /// `methods`.
    #[serde(default)]
    pub methods: Vec<String>,
    /// `notMethods`.
    #[serde(default)]
    pub not_methods: Vec<String>,
    /// `paths`.
    #[serde(default)]
    pub paths: Vec<String>,
    /// `notPaths`.
    #[serde(default)]
    pub not_paths: Vec<String>,
}

/// One `when` entry.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Condition {
    /// `key`.
    #[serde(default)]
    pub key: String,
    /// `values`.
    #[serde(default)]
    pub values: Vec<String>,
    /// `notValues`.
    #[serde(default)]
    pub not_values: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every field the CRDs define parses, and the CRDs define no field these types lack.
    #[test]
    fn fields_match_the_crds() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/istio");
        let Ok(ap) = std::fs::read_to_string(dir.join("authorizationpolicies.crd.yaml")) else {
            eprintln!("CRDs not found beside the repository; skipped");
            return;
        };
        let ra = std::fs::read_to_string(dir.join("requestauthentications.crd.yaml")).unwrap();
        // A spec with every property of the schema, each given an empty value of its type.
        fn sample(schema: &serde_json::Value) -> serde_json::Value {
            match schema["type"].as_str() {
                Some("object") => {
                    let mut map = serde_json::Map::new();
                    if let Some(props) = schema["properties"].as_object() {
                        for (k, v) in props {
                            map.insert(k.clone(), sample(v));
                        }
                    } else {
                        map.insert("k".into(), serde_json::json!("v"));
                    }
                    serde_json::Value::Object(map)
                }
                Some("array") => serde_json::json!([sample(&schema["items"])]),
                Some("boolean") => serde_json::json!(true),
                Some("integer") => serde_json::json!(1),
                _ => match schema["enum"].as_array().and_then(|e| e.first()) {
                    Some(first) => first.clone(),
                    None => serde_json::json!("x"),
                },
            }
        }
        for (text, is_ap) in [(ap, true), (ra, false)] {
            let crd: serde_json::Value = serde_norway::from_str(&text).unwrap();
            for version in crd["spec"]["versions"].as_array().unwrap() {
                let spec = sample(&version["schema"]["openAPIV3Schema"]["properties"]["spec"]);
                if is_ap {
                    serde_json::from_value::<AuthorizationPolicySpec>(spec).unwrap();
                } else {
                    serde_json::from_value::<RequestAuthenticationSpec>(spec).unwrap();
                }
            }
        }
    }

    #[test]
    fn unknown_fields_are_refused() {
        let bad = serde_json::json!({"rules": [{"to": [{"operation": {"notPath": ["/a"]}}]}]});
        let err = serde_json::from_value::<AuthorizationPolicySpec>(bad).unwrap_err();
        assert!(err.to_string().contains("notPath"), "{err}");
        let bad = serde_json::json!({"jwtRules": [{"issuer": "a", "fromHeader": []}]});
        assert!(serde_json::from_value::<RequestAuthenticationSpec>(bad).is_err());
        let bad = serde_json::json!({"action": "REJECT"});
        assert!(serde_json::from_value::<AuthorizationPolicySpec>(bad).is_err());
    }
}
