//! Enrichment fields added to json and celery records: who wrote the record and where it sits.
//!
//! [`Enrichment`] is built once at startup (host, Kubernetes Downward API values, `--field`s) and
//! pre-serialised, so adding it to a record is a copy of bytes. [`FileContext`] is built once per
//! file (path, identity). Per record only `offset` and `id` are written.
//!
//! `id` is `DEV-INODE-FINGERPRINT-OFFSET` in lower-case hex: stable for a given record across
//! restarts and resends, so a consumer can drop the duplicates that at-least-once delivery allows.

use super::json::{push_hex, push_json_str, push_u64};

/// Environment variable names holding Kubernetes Downward API values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubernetesEnvNames {
    pub pod: String,
    pub namespace: String,
    pub node: String,
    pub container: String,
}

impl Default for KubernetesEnvNames {
    fn default() -> Self {
        KubernetesEnvNames {
            pod: "POD_NAME".into(),
            namespace: "POD_NAMESPACE".into(),
            node: "NODE_NAME".into(),
            container: "CONTAINER_NAME".into(),
        }
    }
}

/// Kubernetes values from the Downward API; a missing or empty variable leaves its field out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Kubernetes {
    pub pod: Option<String>,
    pub namespace: Option<String>,
    pub node: Option<String>,
    pub container: Option<String>,
}

impl Kubernetes {
    /// Reads the Downward API variables. The only function in `parse` that touches the
    /// environment; call it once at startup.
    pub fn from_env(names: &KubernetesEnvNames) -> Kubernetes {
        let read = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        Kubernetes {
            pod: read(&names.pod),
            namespace: read(&names.namespace),
            node: read(&names.node),
            container: read(&names.container),
        }
    }
}

/// Process-wide enrichment, built once and shared by reference.
#[derive(Debug, Clone, Default)]
pub struct Enrichment {
    host: Option<String>,
    kubernetes: Kubernetes,
    /// `(key, "key":"value")`, in output order: host, pod, namespace, node, container, then the
    /// `--field`s. A `--field` named like a built-in field replaces it.
    fields: Vec<(String, String, Vec<u8>)>,
}

impl Enrichment {
    /// `static_fields` are the `--field key=value` pairs, already split; a key in [`RECORD_KEYS`]
    /// is ignored, since those fields are per record.
    pub fn new(
        host: Option<String>,
        kubernetes: Kubernetes,
        static_fields: Vec<(String, String)>,
    ) -> Enrichment {
        let mut pairs: Vec<(String, String)> = Vec::new();
        let builtin = [
            ("host", &host),
            ("pod", &kubernetes.pod),
            ("namespace", &kubernetes.namespace),
            ("node", &kubernetes.node),
            ("container", &kubernetes.container),
        ];
        for (key, value) in builtin {
            if let Some(value) = value {
                pairs.push((key.to_string(), value.clone()));
            }
        }
        for (key, value) in static_fields {
            if RECORD_KEYS.contains(&key.as_str()) {
                // Per-record keys cannot be overridden (config validation rejects them).
                continue;
            }
            match pairs.iter_mut().find(|(k, _)| *k == key) {
                Some(existing) => existing.1 = value,
                None => pairs.push((key, value)),
            }
        }
        let fields = pairs
            .into_iter()
            .map(|(key, value)| {
                let mut serialized = Vec::with_capacity(key.len() + value.len() + 6);
                push_json_str(&mut serialized, &key);
                serialized.push(b':');
                push_json_str(&mut serialized, &value);
                (key, value, serialized)
            })
            .collect();
        Enrichment {
            host,
            kubernetes,
            fields,
        }
    }

    pub fn host(&self) -> Option<&str> {
        self.host.as_deref()
    }

    pub fn pod(&self) -> Option<&str> {
        self.kubernetes.pod.as_deref()
    }

    /// The value of a static field (built-in or `--field`), for partition keys.
    pub fn field(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _, _)| k == key)
            .map(|(_, v, _)| v.as_str())
    }

    /// Keys of the static fields, in output order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.fields.iter().map(|(k, _, _)| k.as_str())
    }
}

/// A file's identity, from the file source: device, inode, and a checksum of its first bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct FileIdentity {
    pub dev: u64,
    pub inode: u64,
    pub fingerprint: u32,
}

/// Per-file enrichment, built when the file is opened.
#[derive(Debug, Clone)]
pub struct FileContext {
    path: String,
    /// `"file":"<path>"`.
    file_field: Vec<u8>,
    /// `DEV-INODE-FINGERPRINT-`, the part of `id` shared by every record of the file.
    id_prefix: Vec<u8>,
}

impl FileContext {
    /// `path` as the user should see it (lossy if the path is not UTF-8).
    pub fn new(path: impl Into<String>, identity: FileIdentity) -> FileContext {
        let path = path.into();
        let mut file_field = Vec::with_capacity(path.len() + 10);
        push_json_str(&mut file_field, "file");
        file_field.push(b':');
        push_json_str(&mut file_field, &path);
        let mut id_prefix = Vec::with_capacity(48);
        push_hex(&mut id_prefix, identity.dev);
        id_prefix.push(b'-');
        push_hex(&mut id_prefix, identity.inode);
        id_prefix.push(b'-');
        push_hex(&mut id_prefix, u64::from(identity.fingerprint));
        id_prefix.push(b'-');
        FileContext {
            path,
            file_field,
            id_prefix,
        }
    }

    pub fn path(&self) -> &str {
        &self.path
    }
}

/// Keys written per record, after the static fields.
pub const RECORD_KEYS: [&str; 3] = ["file", "offset", "id"];

/// Writes the enrichment as `,"k":v` pairs (the caller has written at least one field before).
/// `skip(i)` leaves out the `i`-th key, counting static keys ([`Enrichment::keys`]) then
/// [`RECORD_KEYS`]: the keys a record already has.
pub fn write_fields(
    out: &mut Vec<u8>,
    enrichment: &Enrichment,
    file: &FileContext,
    offset: u64,
    skip: impl Fn(usize) -> bool,
) {
    for (i, (_, _, serialized)) in enrichment.fields.iter().enumerate() {
        if !skip(i) {
            out.push(b',');
            out.extend_from_slice(serialized);
        }
    }
    let n = enrichment.fields.len();
    if !skip(n) {
        out.push(b',');
        out.extend_from_slice(&file.file_field);
    }
    if !skip(n + 1) {
        out.extend_from_slice(b",\"offset\":");
        push_u64(out, offset);
    }
    if !skip(n + 2) {
        out.extend_from_slice(b",\"id\":\"");
        out.extend_from_slice(&file.id_prefix);
        push_hex(out, offset);
        out.push(b'"');
    }
}
