//! How a remote key set is reached inside an Istio mesh: the URL's parts and the name of the
//! Envoy cluster istiod builds for its host, so a policy need not spell it out and
//! `claimgate manifest` can emit the ServiceEntry that creates it.

/// The parts of an `http://` or `https://` URL that decide how Envoy reaches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpEndpoint {
    /// `https` (TLS to the host) or not.
    pub tls: bool,
    /// Host name, lower-cased, without port.
    pub host: String,
    /// Port, explicit or the scheme's default.
    pub port: u16,
    /// The authority as the URL wrote it (host and explicit port): the request's `:authority`.
    pub authority: String,
    /// Path and query, `/` when the URL has none: the request's `:path`.
    pub path: String,
}

impl HttpEndpoint {
    /// Parses an absolute http(s) URL. IP-literal hosts in brackets, user info and empty
    /// hosts are refused: none of them names a mesh service.
    pub fn parse(url: &str) -> Result<HttpEndpoint, String> {
        let (tls, rest) = if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(format!("`{url}` is not an http(s) URL"));
        };
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let after = rest.get(authority.len()..).unwrap_or_default();
        let after = after.split('#').next().unwrap_or_default();
        let path = match after.chars().next() {
            Some('/') => after.to_owned(),
            Some(_) => format!("/{after}"),
            None => "/".to_owned(),
        };
        if authority.contains('@') || authority.contains('[') {
            return Err(format!(
                "`{url}`: user info and IP-literal hosts are not supported"
            ));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) => {
                let port: u16 = port
                    .parse()
                    .map_err(|_| format!("`{url}`: bad port `{port}`"))?;
                (host, port)
            }
            None => (authority, if tls { 443 } else { 80 }),
        };
        if host.is_empty() || port == 0 {
            return Err(format!("`{url}` has no host or port"));
        }
        Ok(HttpEndpoint {
            tls,
            host: host.to_ascii_lowercase(),
            port,
            authority: authority.to_owned(),
            path,
        })
    }

    /// The outbound cluster istiod builds to reach this URL: `outbound|PORT||HOST`.
    ///
    /// An in-cluster Service or a plain-HTTP host is reached on its own port. An external
    /// `https` host is reached through port 80 of a ServiceEntry whose DestinationRule
    /// originates TLS to the real port (Istio's TLS-origination pattern): the filter speaks
    /// plain HTTP to the cluster, and workloads that call the host's port 443 themselves
    /// are left alone (declaring 443 with TLS origination would encrypt their TLS twice).
    pub fn istio_cluster(&self) -> String {
        format!("outbound|{}||{}", self.mesh_port(), self.host)
    }

    /// The port the mesh addresses the host on (see [`HttpEndpoint::istio_cluster`]).
    pub fn mesh_port(&self) -> u16 {
        if self.originates_tls() { 80 } else { self.port }
    }

    /// Whether the mesh, not the filter, must add TLS on the way out.
    pub fn originates_tls(&self) -> bool {
        self.tls && !self.in_cluster()
    }

    /// Whether the host is a Kubernetes Service inside the cluster (istiod already has a
    /// cluster for it; no ServiceEntry is needed).
    pub fn in_cluster(&self) -> bool {
        self.host.ends_with(".svc.cluster.local") || self.host.ends_with(".svc")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_istio_cluster() {
        let e = HttpEndpoint::parse("https://Login.Microsoftonline.com/tid/discovery/v2.0/keys")
            .unwrap();
        assert_eq!(e.istio_cluster(), "outbound|80||login.microsoftonline.com");
        assert!(e.originates_tls() && e.port == 443);
        let k = HttpEndpoint::parse(
            "http://keycloak.keycloak.svc.cluster.local:8080/realms/ml/protocol/openid-connect/certs",
        )
        .unwrap();
        assert_eq!(
            k.istio_cluster(),
            "outbound|8080||keycloak.keycloak.svc.cluster.local"
        );
        assert!(!k.tls && k.in_cluster());
        assert_eq!(HttpEndpoint::parse("http://idp?x").unwrap().port, 80);
        assert_eq!(HttpEndpoint::parse("http://idp?x").unwrap().path, "/?x");
        let keys = HttpEndpoint::parse("https://Idp:8443/realms/ml/certs?v=1#frag").unwrap();
        assert_eq!(
            (keys.authority.as_str(), keys.path.as_str()),
            ("Idp:8443", "/realms/ml/certs?v=1")
        );
        assert_eq!(HttpEndpoint::parse("https://idp").unwrap().path, "/");
    }

    #[test]
    fn refuses_what_is_not_a_service_url() {
        for bad in [
            "ftp://x/keys",
            "https:///keys",
            "https://u:p@host/keys",
            "https://[::1]:8443/keys",
            "https://host:99999/keys",
            "https://host:0/",
        ] {
            assert!(HttpEndpoint::parse(bad).is_err(), "{bad}");
        }
    }
}
