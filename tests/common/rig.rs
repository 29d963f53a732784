//! The one way the integration suites start a sidecar: [`Rig::builder`] starts a real
//! backend (the standard [`Backend`], or any given [`Upstream`]), takes an optional mock
//! token service and JWKS server, and starts the real binary with a [`Cfg`] (made from
//! the backend's URL and changed by closures) or with plain arguments (an example config).
//! The resulting [`Rig`] owns all of them; its fields can be moved out by destructuring.
//! Bind every server the test still needs (`backend: _backend`, not `..` or `_`): an
//! unbound field of a destructured temporary is dropped, and its server stops, at once.

use std::future::Future;

use super::backend::Backend;
use super::config::Cfg;
use super::lifecycle::{Lc, API_KEY, API_KEY_ENV, APP_SECRET, APP_SECRET_ENV};
use super::mock::JwksServer;
use super::raw_backend::RawBackend;
use super::sidecar::{Launch, Sidecar, StartFailure};
use super::token_service::TokenService;

/// What a sidecar forwards to: something with a base URL.
pub trait Upstream {
    /// The `[backend] url` for the config.
    fn base_url(&self) -> String;

    /// The backend started when none is given ([`Backend`] only).
    fn start_default() -> impl Future<Output = Self>
    where
        Self: Sized,
    {
        async { panic!("this kind of backend must be given to Rig::builder().backend()") }
    }
}

impl Upstream for Backend {
    fn base_url(&self) -> String {
        self.url()
    }

    fn start_default() -> impl Future<Output = Self> {
        Backend::start()
    }
}

impl Upstream for RawBackend {
    fn base_url(&self) -> String {
        self.url()
    }
}

/// A bare URL: a backend that is not one of the test servers (a refusing address, a
/// listener the test owns).
impl Upstream for String {
    fn base_url(&self) -> String {
        self.clone()
    }
}

/// One backend shared by several sidecars.
impl<U: Upstream> Upstream for &U {
    fn base_url(&self) -> String {
        (**self).base_url()
    }
}

type CfgFn<'a> = Box<dyn FnOnce(Cfg) -> Cfg + 'a>;

/// How the binary is run: with a config built from [`Cfg`], or with given arguments.
enum Mode {
    Config,
    Args(Vec<String>),
}

/// Builds a [`Rig`]; see the module docs. `T` is the token service (`()` for none), `J`
/// the JWKS server (`()` for none).
pub struct RigBuilder<'a, B = Backend, T = (), J = ()> {
    backend: Option<B>,
    ts: T,
    jwks: J,
    cfg: Vec<CfgFn<'a>>,
    env: Vec<(String, String)>,
    mode: Mode,
}

/// A backend, an optional token service and JWKS server, and the sidecar in front.
pub struct Rig<B = Backend, T = (), J = ()> {
    pub backend: B,
    pub ts: T,
    pub jwks: J,
    pub sc: Sidecar,
    /// The config the sidecar was started with (with [`RigBuilder::args`]: unused, only
    /// `Cfg::new(<backend url>)`).
    pub cfg: Cfg,
}

impl Rig {
    /// The standard backend, no token service, no JWKS server, the default [`Cfg`].
    pub fn builder<'a>() -> RigBuilder<'a> {
        RigBuilder {
            backend: None,
            ts: (),
            jwks: (),
            cfg: Vec::new(),
            env: Vec::new(),
            mode: Mode::Config,
        }
    }

    /// The standard backend and a sidecar with the default config changed by `f`.
    pub async fn start_with(f: impl FnOnce(Cfg) -> Cfg) -> Rig {
        Rig::builder().cfg(f).start().await
    }
}

impl<'a, B, T, J> RigBuilder<'a, B, T, J> {
    /// Forwards to `backend` instead of a fresh [`Backend`].
    pub fn backend<B2: Upstream>(self, backend: B2) -> RigBuilder<'a, B2, T, J> {
        RigBuilder {
            backend: Some(backend),
            ts: self.ts,
            jwks: self.jwks,
            cfg: self.cfg,
            env: self.env,
            mode: self.mode,
        }
    }

    /// Keeps `ts` in the rig (its URLs are wired in by [`RigBuilder::lifecycle`] or by
    /// the test's own config closure).
    pub fn token_service(self, ts: TokenService) -> RigBuilder<'a, B, TokenService, J> {
        RigBuilder {
            backend: self.backend,
            ts,
            jwks: self.jwks,
            cfg: self.cfg,
            env: self.env,
            mode: self.mode,
        }
    }

    /// Keeps `jwks` in the rig (the config closure points the sidecar at it).
    pub fn jwks(self, jwks: JwksServer) -> RigBuilder<'a, B, T, JwksServer> {
        RigBuilder {
            backend: self.backend,
            ts: self.ts,
            jwks,
            cfg: self.cfg,
            env: self.env,
            mode: self.mode,
        }
    }

    /// Changes the config; closures apply in order, to `Cfg::new(<backend url>)`.
    pub fn cfg(mut self, f: impl FnOnce(Cfg) -> Cfg + 'a) -> Self {
        self.cfg.push(Box::new(f));
        self
    }

    /// An environment variable (a secret) for the child process.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.into(), value.into()));
        self
    }

    /// Several environment variables, in order.
    pub fn envs(mut self, pairs: &[(String, String)]) -> Self {
        for (k, v) in pairs {
            self = self.env(k, v);
        }
        self
    }

    /// Runs `auth-sidecar ARGS...` (e.g. `--config examples/x.toml`) instead of writing a
    /// config: only the environment given here reaches it, and no config closure runs.
    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        self.mode = Mode::Args(args.into_iter().map(Into::into).collect());
        self
    }
}

impl<B, J> RigBuilder<'_, B, TokenService, J> {
    /// The lifecycle sections for the token service ([`Lc::for_service`], changed by
    /// `f`) with the API key and app-identity secret in the environment. Applied after
    /// the `cfg` closures given so far.
    pub fn lifecycle(self, f: impl FnOnce(&mut Lc)) -> Self {
        let mut lc = Lc::for_service(&self.ts);
        f(&mut lc);
        let text = lc.render();
        self.cfg(move |c| {
            c.env(API_KEY_ENV, API_KEY)
                .env(APP_SECRET_ENV, APP_SECRET)
                .extra(&text)
        })
    }
}

impl<B: Upstream, T, J> RigBuilder<'_, B, T, J> {
    /// Starts everything; panics with the sidecar's output if it does not come up.
    pub async fn start(self) -> Rig<B, T, J> {
        match self.try_start().await {
            Ok(rig) => rig,
            Err((f, cfg)) => panic!(
                "sidecar did not start (exit: {:?})\n--- config ---\n{}\n--- output ---\n{}",
                f.status,
                cfg.render(),
                f.output
            ),
        }
    }

    /// Starts everything, or reports how the sidecar failed to start (and its config).
    pub async fn try_start(self) -> Result<Rig<B, T, J>, (StartFailure, Cfg)> {
        let backend = match self.backend {
            Some(b) => b,
            None => B::start_default().await,
        };
        let mut cfg = Cfg::new(&backend.base_url());
        let launch = match self.mode {
            Mode::Config => {
                for f in self.cfg {
                    cfg = f(cfg);
                }
                for (k, v) in &self.env {
                    cfg = cfg.env(k, v);
                }
                Launch::config(&cfg)
            }
            Mode::Args(args) => {
                cfg.env.clear();
                Launch::args(args).envs(&self.env)
            }
        };
        match Sidecar::try_launch(launch).await {
            Ok(sc) => Ok(Rig {
                backend,
                ts: self.ts,
                jwks: self.jwks,
                sc,
                cfg,
            }),
            Err(f) => Err((f, cfg)),
        }
    }
}
