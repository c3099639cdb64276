//! How a remote key set is reached inside an Istio mesh: the URL's parts and the name of the
//! Envoy cluster istiod builds for its host, so a policy need not spell it out and
//! `claimgate manifest` can emit the ServiceEntry that creates it.

/// Kubernetes' default cluster DNS domain, the one istiod's cluster names use unless the
/// mesh was installed with another.
pub const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";

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

    /// The outbound cluster istiod builds to reach this URL, for a cluster whose DNS domain
    /// is `cluster.local` (Kubernetes' default): see [`HttpEndpoint::istio_cluster_in`].
    pub fn istio_cluster(&self) -> String {
        self.istio_cluster_in(DEFAULT_CLUSTER_DOMAIN)
    }

    /// The outbound cluster istiod builds to reach this URL: `outbound|PORT||HOST`.
    ///
    /// - An in-cluster Service is named by its FQDN, as istiod names the clusters of
    ///   Kubernetes Services (`keycloak.ns.svc` → `keycloak.ns.svc.<cluster_domain>`), on the
    ///   Service's own port; for `https` a DestinationRule makes that cluster originate TLS.
    /// - A plain-HTTP host outside the cluster is reached on its own port.
    /// - An external `https` host is reached through port 80 of a ServiceEntry whose
    ///   DestinationRule originates TLS to the real port (Istio's TLS-origination pattern):
    ///   workloads that call the host's port 443 themselves are left alone (declaring 443
    ///   with TLS origination would encrypt their TLS twice).
    ///
    /// The filter always speaks plain HTTP to the cluster (`dispatch_http_call`).
    pub fn istio_cluster_in(&self, cluster_domain: &str) -> String {
        format!(
            "outbound|{}||{}",
            self.mesh_port(),
            self.mesh_host(cluster_domain)
        )
    }

    /// The host as istiod names it: the FQDN of an in-cluster Service, else the host.
    pub fn mesh_host(&self, cluster_domain: &str) -> String {
        if self.host_labels().count() == 3 && self.in_cluster() {
            format!("{}.{cluster_domain}", self.host)
        } else {
            self.host.clone()
        }
    }

    /// The port the mesh addresses the host on (see [`HttpEndpoint::istio_cluster_in`]).
    pub fn mesh_port(&self) -> u16 {
        if self.tls && !self.in_cluster() {
            80
        } else {
            self.port
        }
    }

    /// Whether the mesh, not the filter, must add TLS on the way out: every `https` key
    /// set, since the filter's callout is plain HTTP to an Envoy cluster.
    pub fn originates_tls(&self) -> bool {
        self.tls
    }

    /// Whether the host is a Kubernetes Service inside the cluster, `NAME.NAMESPACE.svc`
    /// with or without the cluster domain (istiod already has a cluster for it; no
    /// ServiceEntry is needed).
    pub fn in_cluster(&self) -> bool {
        let labels: Vec<&str> = self.host_labels().take(3).collect();
        matches!(labels.as_slice(), [name, namespace, "svc"] if !name.is_empty() && !namespace.is_empty())
    }

    /// The cluster domain an in-cluster FQDN names (`keycloak.ns.svc.cluster.local` →
    /// `cluster.local`); `None` for `NAME.NAMESPACE.svc` and hosts outside the cluster.
    pub fn cluster_domain(&self) -> Option<&str> {
        if !self.in_cluster() {
            return None;
        }
        self.host.splitn(4, '.').nth(3)
    }

    /// Whether the host is a bare name without a dot (`keycloak`), other than `localhost`:
    /// inside a pod it resolves through the pod's DNS search path, so it names a different
    /// Service in every namespace, and istiod builds no cluster of that name.
    pub fn is_short_name(&self) -> bool {
        !self.host.contains('.') && self.host != "localhost"
    }

    /// Whether the host has exactly two labels and is not an IPv4 address (`keycloak.auth`
    /// could be a Service `NAME.NAMESPACE` or a host on the internet).
    pub fn is_two_labels(&self) -> bool {
        self.host_labels().count() == 2 && self.host.parse::<std::net::Ipv4Addr>().is_err()
    }

    fn host_labels(&self) -> impl Iterator<Item = &str> {
        self.host.trim_end_matches('.').split('.')
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
        assert_eq!(k.cluster_domain(), Some("cluster.local"));
        assert_eq!(HttpEndpoint::parse("http://idp?x").unwrap().port, 80);
        assert_eq!(HttpEndpoint::parse("http://idp?x").unwrap().path, "/?x");
        let keys = HttpEndpoint::parse("https://Idp:8443/realms/ml/certs?v=1#frag").unwrap();
        assert_eq!(
            (keys.authority.as_str(), keys.path.as_str()),
            ("Idp:8443", "/realms/ml/certs?v=1")
        );
        assert_eq!(HttpEndpoint::parse("https://idp").unwrap().path, "/");
    }

    /// Issue 11: `keycloak.ns.svc` was named `outbound|8080||keycloak.ns.svc`, a cluster
    /// istiod never builds (it names Services by their FQDN), and an in-cluster `https` key
    /// set was fetched in plain HTTP from the TLS port.
    #[test]
    fn in_cluster_services_are_named_by_their_fqdn() {
        let short = HttpEndpoint::parse("http://keycloak.auth.svc:8080/certs").unwrap();
        assert_eq!(
            short.istio_cluster(),
            "outbound|8080||keycloak.auth.svc.cluster.local"
        );
        assert_eq!(
            short.istio_cluster_in("corp.example"),
            "outbound|8080||keycloak.auth.svc.corp.example"
        );
        assert_eq!(short.cluster_domain(), None);
        let fqdn = HttpEndpoint::parse("https://keycloak.auth.svc.cluster.local/certs").unwrap();
        assert_eq!(
            fqdn.istio_cluster_in("corp.example"),
            "outbound|443||keycloak.auth.svc.cluster.local"
        );
        assert!(fqdn.in_cluster() && fqdn.originates_tls() && fqdn.mesh_port() == 443);
        for not_service in [
            "http://svc/x",
            "http://a.svc/x",
            "http://a.b.svcs/x",
            "http://.b.svc/x",
        ] {
            let e = HttpEndpoint::parse(not_service).unwrap();
            assert!(!e.in_cluster(), "{not_service}");
        }
        let names = |url: &str| {
            let e = HttpEndpoint::parse(url).unwrap();
            (e.is_short_name(), e.is_two_labels())
        };
        assert_eq!(names("http://keycloak:8080/x"), (true, false));
        assert_eq!(names("http://localhost:8080/x"), (false, false));
        assert_eq!(names("http://keycloak.auth:8080/x"), (false, true));
        assert_eq!(names("http://10.0.0.1/x"), (false, false));
        assert_eq!(names("https://login.example.com/x"), (false, false));
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
