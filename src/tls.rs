//! TLS set-up shared by every role. kube-rs enables rustls's `ring` provider
//! and the AWS SDK `aws-lc-rs`; with two providers compiled in, rustls picks
//! none and the first HTTPS request (to a real kube-apiserver, say) panics.
//! So the process installs one, once, before any client exists.

use std::sync::Once;

static INSTALL: Once = Once::new();

/// Installs aws-lc-rs (FIPS-capable, already built for the AWS SDK) as the
/// process-wide rustls provider. Idempotent; a provider installed earlier by
/// someone else is kept.
pub fn install_crypto_provider() {
    INSTALL.call_once(|| {
        // Err means one is already installed: that one serves as well.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    });
}
