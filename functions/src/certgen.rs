//! `coracle certgen`: the admission server's TLS without cert-manager. A one-shot Job creates a
//! private CA and a serving certificate for `<service>.<namespace>.svc` into a `kubernetes.io/tls`
//! Secret and writes the CA into the webhook configurations' `caBundle`.
//!
//! Idempotent: a Secret whose certificate covers the names and stays valid for more than
//! `RENEW_BEFORE_DAYS` is kept, and only the caBundles are (re)written. When it renews, the
//! caBundle carries the new CA and the previous one, so the API server trusts the server both
//! before and after its pods pick up the new files (`coracle serve` reloads them on change).
//! The CA's key is never stored: a renewal makes a new CA.

use crate::rbac::{self, Rule};
use base64::Engine as _;
use chrono::{DateTime, Datelike, Duration, Utc};
use k8s_openapi::api::admissionregistration::v1::{MutatingWebhookConfiguration, ValidatingWebhookConfiguration};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use std::collections::BTreeMap;

/// Serving certificates are valid this long.
pub const VALID_DAYS: i64 = 365;
/// A certificate with less than this left is renewed.
pub const RENEW_BEFORE_DAYS: i64 = 30;
/// Annotations recording what the Secret's certificate covers, so a rerun need not parse X.509.
pub const ANNOTATION_NOT_AFTER: &str = "coracle.dev/not-after";
pub const ANNOTATION_DNS_NAMES: &str = "coracle.dev/dns-names";

#[derive(Debug, thiserror::Error)]
pub enum CertgenError {
    #[error("generating the certificate: {0}")]
    Generate(String),
    /// The restore webhook is required: a Job run before `kubectl apply` created it fails and is retried.
    #[error("MutatingWebhookConfiguration {0} does not exist (yet); its caBundle could not be written")]
    MissingWebhook(String),
    #[error("{action} (needs RBAC: {rule}): {source}")]
    Api {
        action: String,
        rule: Rule,
        #[source]
        source: Box<kube::Error>,
    },
}

fn api_err(rule: Rule, action: impl Into<String>) -> impl FnOnce(kube::Error) -> CertgenError {
    let action = action.into();
    move |source| CertgenError::Api { action, rule, source: Box::new(source) }
}

/// What `coracle certgen` writes.
#[derive(Debug, Clone)]
pub struct Options {
    pub namespace: String,
    pub service: String,
    pub secret: String,
    /// Webhook configurations whose every webhook gets the caBundle: the mutating ones must exist,
    /// a missing validating one (optional, rollout triggers) is skipped.
    pub mutating_webhooks: Vec<String>,
    pub validating_webhooks: Vec<String>,
}

impl Options {
    /// The names the API server verifies the serving certificate against.
    pub fn dns_names(&self) -> Vec<String> {
        let (s, n) = (&self.service, &self.namespace);
        vec![format!("{s}.{n}.svc"), format!("{s}.{n}.svc.cluster.local"), format!("{s}.{n}"), s.clone()]
    }
}

/// A CA and the serving certificate it signed (PEM).
#[derive(Debug, Clone)]
pub struct Issued {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    pub not_after: DateTime<Utc>,
}

/// rcgen takes whole days; the time of day does not matter at these lifetimes.
fn ymd(t: DateTime<Utc>) -> (i32, u8, u8) {
    (t.year(), u8::try_from(t.month()).unwrap_or(1), u8::try_from(t.day()).unwrap_or(1))
}

/// Issues a CA (valid a little longer than the certificate) and a serving certificate for `names`.
pub fn issue(names: &[String], now: DateTime<Utc>) -> Result<Issued, CertgenError> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    let err = |e: rcgen::Error| CertgenError::Generate(e.to_string());
    let not_before = now - Duration::days(1);
    let not_after = now + Duration::days(VALID_DAYS);

    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.distinguished_name.push(DnType::CommonName, format!("coracle webhook CA {}", now.format("%Y%m%d%H%M%S")));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let (y, m, d) = ymd(not_before);
    ca_params.not_before = rcgen::date_time_ymd(y, m, d);
    let (y, m, d) = ymd(not_after + Duration::days(1));
    ca_params.not_after = rcgen::date_time_ymd(y, m, d);
    let ca_key = KeyPair::generate().map_err(err)?;
    let ca_cert = ca_params.self_signed(&ca_key).map_err(err)?;

    let mut params = CertificateParams::new(names.to_vec()).map_err(err)?;
    params.distinguished_name.push(DnType::CommonName, names.first().cloned().unwrap_or_default());
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let (y, m, d) = ymd(not_before);
    params.not_before = rcgen::date_time_ymd(y, m, d);
    let (y, m, d) = ymd(not_after);
    params.not_after = rcgen::date_time_ymd(y, m, d);
    let key = KeyPair::generate().map_err(err)?;
    let cert = params.signed_by(&key, &Issuer::new(ca_params, ca_key)).map_err(err)?;
    Ok(Issued { ca_pem: ca_cert.pem(), cert_pem: cert.pem(), key_pem: key.serialize_pem(), not_after })
}

/// Whether an existing Secret can stay: all three files present, the recorded names equal
/// `names`, and more than `RENEW_BEFORE_DAYS` left.
pub fn still_good(secret: &Secret, names: &[String], now: DateTime<Utc>) -> bool {
    let data = secret.data.clone().unwrap_or_default();
    let complete = ["ca.crt", "tls.crt", "tls.key"].iter().all(|k| data.get(*k).is_some_and(|v| !v.0.is_empty()));
    let annotations = secret.metadata.annotations.clone().unwrap_or_default();
    let names_match = annotations.get(ANNOTATION_DNS_NAMES).is_some_and(|v| *v == names.join(","));
    let fresh = annotations
        .get(ANNOTATION_NOT_AFTER)
        .and_then(|v| DateTime::parse_from_rfc3339(v).ok())
        .is_some_and(|t| t.with_timezone(&Utc) - now > Duration::days(RENEW_BEFORE_DAYS));
    complete && names_match && fresh
}

/// The caBundle after a renewal: the new CA first, then the previous one (if any) so the server's
/// old certificate is still trusted until its pods reload.
pub fn ca_bundle(new_ca: &str, previous_ca: Option<&str>) -> String {
    match previous_ca.map(str::trim).filter(|p| !p.is_empty() && *p != new_ca.trim()) {
        Some(prev) => format!("{}\n{}\n", new_ca.trim_end(), prev),
        None => new_ca.to_string(),
    }
}

fn secret_object(opts: &Options, issued: &Issued, bundle: &str, names: &[String]) -> Secret {
    let data = BTreeMap::from([
        ("ca.crt".to_string(), ByteString(bundle.as_bytes().to_vec())),
        ("tls.crt".to_string(), ByteString(issued.cert_pem.as_bytes().to_vec())),
        ("tls.key".to_string(), ByteString(issued.key_pem.as_bytes().to_vec())),
    ]);
    Secret {
        metadata: ObjectMeta {
            name: Some(opts.secret.clone()),
            namespace: Some(opts.namespace.clone()),
            labels: Some(BTreeMap::from([("app.kubernetes.io/managed-by".to_string(), "coracle-certgen".to_string())])),
            annotations: Some(BTreeMap::from([
                (ANNOTATION_NOT_AFTER.to_string(), issued.not_after.to_rfc3339()),
                (ANNOTATION_DNS_NAMES.to_string(), names.join(",")),
            ])),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(data),
        ..Default::default()
    }
}

/// What a run did, for its log line.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    pub issued: bool,
    pub patched: Vec<String>,
    pub missing: Vec<String>,
}

/// Ensures the Secret and the caBundles (see the module comment).
pub async fn run(client: &kube::Client, opts: &Options, now: DateTime<Utc>) -> Result<Outcome, CertgenError> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &opts.namespace);
    let names = opts.dns_names();
    let existing = secrets
        .get_opt(&opts.secret)
        .await
        .map_err(api_err(rbac::UPDATE_WEBHOOK_TLS, format!("reading Secret {}/{}", opts.namespace, opts.secret)))?;
    let mut outcome = Outcome::default();
    let bundle = match &existing {
        Some(s) if still_good(s, &names, now) => {
            let data = s.data.clone().unwrap_or_default();
            String::from_utf8_lossy(&data.get("ca.crt").map(|b| b.0.clone()).unwrap_or_default()).into_owned()
        }
        _ => {
            let issued = issue(&names, now)?;
            let previous = existing
                .as_ref()
                .and_then(|s| s.data.as_ref())
                .and_then(|d| d.get("ca.crt"))
                .map(|b| String::from_utf8_lossy(&b.0).into_owned());
            // Keep only the newest previous CA: the bundle does not grow with every renewal.
            let previous_first = previous.as_deref().and_then(first_pem);
            let bundle = ca_bundle(&issued.ca_pem, previous_first.as_deref());
            let mut object = secret_object(opts, &issued, &bundle, &names);
            match existing {
                Some(old) => {
                    object.metadata.resource_version = old.metadata.resource_version;
                    secrets.replace(&opts.secret, &PostParams::default(), &object).await.map_err(api_err(
                        rbac::UPDATE_WEBHOOK_TLS,
                        format!("updating Secret {}/{}", opts.namespace, opts.secret),
                    ))?;
                }
                None => {
                    secrets.create(&PostParams::default(), &object).await.map_err(api_err(
                        rbac::CREATE_SECRETS,
                        format!("creating Secret {}/{}", opts.namespace, opts.secret),
                    ))?;
                }
            }
            outcome.issued = true;
            bundle
        }
    };
    let encoded = base64::engine::general_purpose::STANDARD.encode(bundle.as_bytes());
    for name in &opts.mutating_webhooks {
        // The restore webhook is required: a run before `kubectl apply` created it fails and is retried.
        if !write_ca_bundles::<MutatingWebhookConfiguration>(client, name, rbac::PATCH_WEBHOOKS, &encoded).await? {
            return Err(CertgenError::MissingWebhook(name.clone()));
        }
        outcome.patched.push(name.clone());
    }
    for name in &opts.validating_webhooks {
        if write_ca_bundles::<ValidatingWebhookConfiguration>(client, name, rbac::PATCH_VALIDATING_WEBHOOKS, &encoded)
            .await?
        {
            outcome.patched.push(name.clone());
        } else {
            outcome.missing.push(name.clone());
        }
    }
    Ok(outcome)
}

/// Sets `clientConfig.caBundle` (base64) on every webhook of a configuration's `webhooks` list.
/// Writes `encoded` as the caBundle of every webhook of one (mutating or validating) webhook
/// configuration, guarded by its resourceVersion; `false` when the configuration does not exist.
async fn write_ca_bundles<K>(client: &kube::Client, name: &str, rule: Rule, encoded: &str) -> Result<bool, CertgenError>
where
    K: kube::Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned + serde::Serialize,
{
    let kind = K::kind(&());
    let api: Api<K> = Api::all(client.clone());
    let Some(config) = api.get_opt(name).await.map_err(api_err(rule, format!("reading {kind} {name}")))? else {
        return Ok(false);
    };
    let config = serde_json::to_value(&config).unwrap_or_default();
    let mut webhooks = config.get("webhooks").cloned().unwrap_or_else(|| serde_json::json!([]));
    set_ca_bundles(&mut webhooks, encoded);
    let patch = serde_json::json!({
        "metadata": {"resourceVersion": config["metadata"]["resourceVersion"]},
        "webhooks": webhooks,
    });
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(api_err(rule, format!("patching {kind} {name}")))?;
    Ok(true)
}

pub fn set_ca_bundles(webhooks: &mut serde_json::Value, encoded: &str) {
    if let Some(list) = webhooks.as_array_mut() {
        for webhook in list {
            if let Some(config) = webhook.get_mut("clientConfig").and_then(|c| c.as_object_mut()) {
                config.insert("caBundle".into(), serde_json::Value::String(encoded.to_string()));
            }
        }
    }
}

/// The first PEM block of a bundle.
fn first_pem(bundle: &str) -> Option<String> {
    const END: &str = "-----END CERTIFICATE-----";
    let end = bundle.find(END)? + END.len();
    let start = bundle[..end].find("-----BEGIN CERTIFICATE-----")?;
    Some(format!("{}\n", &bundle[start..end]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> Options {
        Options {
            namespace: "coracle-system".into(),
            service: "coracle".into(),
            secret: rbac::WEBHOOK_TLS_SECRET.into(),
            mutating_webhooks: vec![rbac::MUTATING_WEBHOOK.into()],
            validating_webhooks: vec![],
        }
    }

    #[test]
    fn a_fresh_secret_is_kept_and_an_old_or_renamed_one_renewed() {
        let now = Utc::now();
        let o = opts();
        let issued = issue(&o.dns_names(), now).expect("issued");
        assert!(issued.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(issued.key_pem.contains("PRIVATE KEY"));
        let secret = secret_object(&o, &issued, &issued.ca_pem, &o.dns_names());
        assert!(still_good(&secret, &o.dns_names(), now));
        assert!(!still_good(&secret, &o.dns_names(), now + Duration::days(VALID_DAYS - RENEW_BEFORE_DAYS + 1)));
        let other = Options { service: "other".into(), ..o.clone() };
        assert!(!still_good(&secret, &other.dns_names(), now));
        let mut empty = secret.clone();
        empty.data = None;
        assert!(!still_good(&empty, &o.dns_names(), now));
    }

    #[test]
    fn the_bundle_keeps_exactly_one_previous_ca() {
        let now = Utc::now();
        let a = issue(&opts().dns_names(), now).expect("a").ca_pem;
        let b = issue(&opts().dns_names(), now).expect("b").ca_pem;
        let c = issue(&opts().dns_names(), now).expect("c").ca_pem;
        let ab = ca_bundle(&b, Some(&a));
        assert_eq!(ab.matches("BEGIN CERTIFICATE").count(), 2);
        let next = ca_bundle(&c, first_pem(&ab).as_deref());
        assert_eq!(next.matches("BEGIN CERTIFICATE").count(), 2);
        assert!(next.starts_with(c.trim_end()) && next.contains(b.trim_end()) && !next.contains(a.trim_end()));
        assert_eq!(ca_bundle(&a, Some(&a)), a);
    }

    #[test]
    fn every_webhook_gets_the_bundle() {
        let mut hooks = serde_json::json!([{"name": "a", "clientConfig": {"service": {"name": "coracle"}}}, {"name": "b", "clientConfig": {}}]);
        set_ca_bundles(&mut hooks, "Q0E=");
        assert_eq!(hooks[0]["clientConfig"]["caBundle"], "Q0E=");
        assert_eq!(hooks[1]["clientConfig"]["caBundle"], "Q0E=");
        assert_eq!(hooks[0]["clientConfig"]["service"]["name"], "coracle");
    }
}
