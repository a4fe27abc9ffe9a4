//! Where the API server is and how to prove who the agent is: the pod's
//! service account (in-cluster), or a kubeconfig file.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use base64::Engine as _;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject as _};
use serde::Deserialize;

const SERVICE_ACCOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("kubeconfig: {0}")]
    Kubeconfig(String),
    #[error("server URL {url:?}: {message}")]
    Server { url: String, message: String },
    #[error("TLS: {0}")]
    Tls(String),
}

/// How each request proves the agent's identity.
#[derive(Debug, Clone)]
pub enum Auth {
    None,
    Token(String),
    /// Read at every request: projected service-account tokens rotate.
    TokenFile(PathBuf),
}

impl Auth {
    pub fn bearer(&self) -> Result<Option<String>, SourceError> {
        match self {
            Auth::None => Ok(None),
            Auth::Token(token) => Ok(Some(token.clone())),
            Auth::TokenFile(path) => std::fs::read_to_string(path)
                .map(|t| Some(t.trim().to_owned()))
                .map_err(|e| file_error(path, e)),
        }
    }
}

/// An API server endpoint: `https://host:port/prefix` and its credentials.
#[derive(Clone)]
pub struct ApiSource {
    pub host: String,
    pub port: u16,
    /// Any path a proxy puts before `/api` (kubeconfigs may name one).
    pub path_prefix: String,
    /// `None`: plain HTTP (only if the kubeconfig says `http://`).
    pub tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
    pub auth: Auth,
}

impl std::fmt::Debug for ApiSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiSource")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("path_prefix", &self.path_prefix)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

/// The service account of the pod the agent runs in; `None` outside a pod.
pub fn in_cluster() -> Option<Result<ApiSource, SourceError>> {
    let host = std::env::var("KUBERNETES_SERVICE_HOST").ok()?;
    let dir = Path::new(SERVICE_ACCOUNT);
    if !dir.join("token").exists() {
        return None;
    }
    let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
    let host = match host.contains(':') {
        true => format!("[{host}]"),
        false => host,
    };
    Some((|| {
        let ca =
            std::fs::read(dir.join("ca.crt")).map_err(|e| file_error(&dir.join("ca.crt"), e))?;
        source(
            &format!("https://{host}:{port}"),
            Some(&ca),
            None,
            None,
            Auth::TokenFile(dir.join("token")),
        )
    })())
}

#[derive(Deserialize)]
struct Kubeconfig {
    #[serde(default)]
    clusters: Vec<Named<Cluster>>,
    #[serde(default)]
    users: Vec<Named<User>>,
    #[serde(default)]
    contexts: Vec<Named<Context>>,
    #[serde(rename = "current-context", default)]
    current_context: String,
}

#[derive(Deserialize)]
struct Named<T> {
    name: String,
    #[serde(alias = "cluster", alias = "user", alias = "context")]
    item: T,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Cluster {
    server: String,
    certificate_authority_data: Option<String>,
    certificate_authority: Option<PathBuf>,
    tls_server_name: Option<String>,
    #[serde(default)]
    insecure_skip_tls_verify: bool,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
struct User {
    token: Option<String>,
    #[serde(rename = "tokenFile")]
    token_file: Option<PathBuf>,
    client_certificate_data: Option<String>,
    client_key_data: Option<String>,
    client_certificate: Option<PathBuf>,
    client_key: Option<PathBuf>,
    exec: Option<serde_yaml_ng::Value>,
    #[serde(rename = "auth-provider")]
    auth_provider: Option<serde_yaml_ng::Value>,
}

#[derive(Deserialize)]
struct Context {
    cluster: String,
    #[serde(default)]
    user: String,
}

/// The current context of the kubeconfig at `path`.
pub fn from_kubeconfig(path: &Path) -> Result<ApiSource, SourceError> {
    let text = std::fs::read_to_string(path).map_err(|e| file_error(path, e))?;
    let config: Kubeconfig =
        serde_yaml_ng::from_str(&text).map_err(|e| SourceError::Kubeconfig(e.to_string()))?;
    let bad = |m: String| SourceError::Kubeconfig(m);
    let context = match config.current_context.as_str() {
        "" if config.contexts.len() == 1 => &config.contexts[0].item,
        "" => return Err(bad("no current-context".into())),
        name => find(&config.contexts, name).ok_or_else(|| bad(format!("no context {name:?}")))?,
    };
    let cluster = find(&config.clusters, &context.cluster)
        .ok_or_else(|| bad(format!("no cluster {:?}", context.cluster)))?;
    let empty = User::default();
    let user = match context.user.as_str() {
        "" => &empty,
        name => find(&config.users, name).ok_or_else(|| bad(format!("no user {name:?}")))?,
    };
    if user.exec.is_some() || user.auth_provider.is_some() {
        return Err(bad(
            "exec and auth-provider credentials are not supported: use a token, tokenFile or client certificate".into(),
        ));
    }
    if cluster.insecure_skip_tls_verify {
        return Err(bad(
            "insecure-skip-tls-verify is not supported: give certificate-authority(-data)".into(),
        ));
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let ca = match (
        &cluster.certificate_authority_data,
        &cluster.certificate_authority,
    ) {
        (Some(data), _) => Some(decode(data, "certificate-authority-data")?),
        (None, Some(file)) => {
            let file = dir.join(file);
            Some(std::fs::read(&file).map_err(|e| file_error(&file, e))?)
        }
        (None, None) => None,
    };
    let read = |file: &PathBuf| {
        let file = dir.join(file);
        std::fs::read(&file).map_err(|e| file_error(&file, e))
    };
    let cert = match (&user.client_certificate_data, &user.client_certificate) {
        (Some(data), _) => Some(decode(data, "client-certificate-data")?),
        (None, Some(file)) => Some(read(file)?),
        (None, None) => None,
    };
    let key = match (&user.client_key_data, &user.client_key) {
        (Some(data), _) => Some(decode(data, "client-key-data")?),
        (None, Some(file)) => Some(read(file)?),
        (None, None) => None,
    };
    let client = match (cert, key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        _ => {
            return Err(bad(
                "a client certificate needs its key, and a key its certificate".into(),
            ));
        }
    };
    let auth = match (&user.token, &user.token_file) {
        (Some(token), _) => Auth::Token(token.clone()),
        (None, Some(file)) => Auth::TokenFile(dir.join(file)),
        (None, None) => Auth::None,
    };
    let mut source = source(
        &cluster.server,
        ca.as_deref(),
        client.as_ref().map(|(c, k)| (c.as_slice(), k.as_slice())),
        cluster.tls_server_name.as_deref(),
        auth,
    )?;
    if source.tls.is_none() && !matches!(source.auth, Auth::None) {
        tracing::warn!(server = %cluster.server, "sending a Kubernetes token over plain HTTP");
    }
    source.path_prefix = source.path_prefix.trim_end_matches('/').to_owned();
    Ok(source)
}

fn find<'a, T>(list: &'a [Named<T>], name: &str) -> Option<&'a T> {
    list.iter().find(|n| n.name == name).map(|n| &n.item)
}

fn decode(data: &str, key: &str) -> Result<Vec<u8>, SourceError> {
    base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .map_err(|e| SourceError::Kubeconfig(format!("{key}: {e}")))
}

fn source(
    url: &str,
    ca_pem: Option<&[u8]>,
    client: Option<(&[u8], &[u8])>,
    tls_server_name: Option<&str>,
    auth: Auth,
) -> Result<ApiSource, SourceError> {
    let server_error = |message: &str| SourceError::Server {
        url: url.to_owned(),
        message: message.to_owned(),
    };
    let uri: hyper::Uri = url.parse().map_err(|_| server_error("not a URL"))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(server_error("use https:// (or http://)")),
    };
    let host = uri
        .host()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| server_error("no host"))?;
    let bare_host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tls = match https {
        false => None,
        true => {
            let config = client_config(ca_pem, client)?;
            let name = tls_server_name.unwrap_or(&bare_host).to_owned();
            let name = ServerName::try_from(name)
                .map_err(|_| server_error("the host is not a DNS name or an IP address"))?;
            Some((config, name))
        }
    };
    Ok(ApiSource {
        host: bare_host,
        port,
        path_prefix: uri.path().trim_end_matches('/').to_owned(),
        tls,
        auth,
    })
}

fn client_config(
    ca_pem: Option<&[u8]>,
    client: Option<(&[u8], &[u8])>,
) -> Result<Arc<ClientConfig>, SourceError> {
    let tls = |m: String| SourceError::Tls(m);
    let mut roots = RootCertStore::empty();
    match ca_pem {
        Some(pem) => {
            let certs = CertificateDer::pem_slice_iter(pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| tls(format!("certificate authority: {e}")))?;
            if certs.is_empty() {
                return Err(tls("certificate authority: no PEM certificate".into()));
            }
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| tls(format!("certificate authority: {e}")))?;
            }
        }
        None => {
            let (added, _) =
                roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            if added == 0 {
                return Err(tls(
                    "no certificate authority given and none in the system store".into(),
                ));
            }
        }
    }
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| tls(e.to_string()))?
            .with_root_certificates(roots);
    let mut config = match client {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(cert)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| tls(format!("client certificate: {e}")))?;
            let key =
                PrivateKeyDer::from_pem_slice(key).map_err(|e| tls(format!("client key: {e}")))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| tls(format!("client certificate: {e}")))?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn file_error(path: &Path, e: impl ToString) -> SourceError {
    SourceError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, text: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("selfops-kubeconfig-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config");
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn kubeconfig_current_context() {
        let path = write(
            "ctx",
            r#"
apiVersion: v1
kind: Config
current-context: b
clusters:
- name: one
  cluster: {server: "https://10.0.0.1:6443/"}
- name: two
  cluster: {server: "https://[fd00::1]:8443/k8s/clusters/c-1", tls-server-name: api.example}
users:
- name: u
  user: {tokenFile: token}
contexts:
- name: a
  context: {cluster: one, user: u}
- name: b
  context: {cluster: two, user: u, namespace: x}
"#,
        );
        let s = from_kubeconfig(&path).unwrap();
        assert_eq!((s.host.as_str(), s.port), ("fd00::1", 8443));
        assert_eq!(s.path_prefix, "/k8s/clusters/c-1");
        assert!(matches!(s.auth, Auth::TokenFile(ref p) if p.ends_with("token")));
        let (_, name) = s.tls.unwrap();
        assert_eq!(name.to_str(), "api.example");
    }

    #[test]
    fn kubeconfig_refusals() {
        for (name, text, says) in [
            (
                "exec",
                "current-context: a\nclusters: [{name: c, cluster: {server: 'https://h'}}]\nusers: [{name: u, user: {exec: {command: aws}}}]\ncontexts: [{name: a, context: {cluster: c, user: u}}]\n",
                "exec",
            ),
            (
                "noctx",
                "current-context: z\nclusters: []\ncontexts: []\n",
                "no context",
            ),
            (
                "scheme",
                "current-context: a\nclusters: [{name: c, cluster: {server: 'ftp://h'}}]\ncontexts: [{name: a, context: {cluster: c}}]\n",
                "https",
            ),
            (
                "ca",
                "current-context: a\nclusters: [{name: c, cluster: {server: 'https://h', certificate-authority-data: '!!'}}]\ncontexts: [{name: a, context: {cluster: c}}]\n",
                "certificate-authority-data",
            ),
        ] {
            let err = from_kubeconfig(&write(name, text)).unwrap_err().to_string();
            assert!(err.contains(says), "{name}: {err}");
        }
    }
}
