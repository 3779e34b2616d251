//! A router that remembers what it serves.
//!
//! axum cannot list the routes of a built `Router`, yet the OpenAPI document must cover every
//! one of them. So routes are registered through [`RouteTable`] and the method builders of this
//! module ([`get`], [`post`], …), which mirror `axum::routing`'s and record each (method, path)
//! as it is added. [`crate::served_routes`] hands the record to the completeness test.

use axum::Router;
use axum::handler::Handler;
use axum::http::Method;
use axum::routing::{self, MethodRouter};

use crate::core_client::CoreClient;

/// One method on one path, as registered with axum (`{*rest}` wildcards included).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServedRoute {
    pub method: Method,
    pub path: String,
}

/// The handlers of one path, with the methods they answer.
pub struct Methods {
    router: MethodRouter<CoreClient>,
    methods: Vec<Method>,
}

macro_rules! method_builders {
    ($($name:ident => $method:ident),* $(,)?) => {
        $(
            #[doc = concat!("`axum::routing::", stringify!($name), "`, recorded.")]
            #[allow(dead_code, reason = "the full set, like axum's; not every method is used yet")]
            pub fn $name<H, T>(handler: H) -> Methods
            where
                H: Handler<T, CoreClient>,
                T: 'static,
            {
                Methods {
                    router: routing::$name(handler),
                    methods: vec![Method::$method],
                }
            }
        )*

        impl Methods {
            $(
                #[doc = concat!("Adds a `", stringify!($method), "` handler.")]
                #[allow(dead_code, reason = "the full set, like axum's; not every method is used yet")]
                pub fn $name<H, T>(mut self, handler: H) -> Self
                where
                    H: Handler<T, CoreClient>,
                    T: 'static,
                {
                    self.router = self.router.$name(handler);
                    self.methods.push(Method::$method);
                    self
                }
            )*
        }
    };
}

method_builders!(get => GET, post => POST, put => PUT, patch => PATCH, delete => DELETE);

/// An axum router of the gateway's routes, and the list of what it serves.
#[derive(Default)]
pub struct RouteTable {
    router: Router<CoreClient>,
    served: Vec<ServedRoute>,
}

impl RouteTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// `Router::route`, recorded.
    pub fn route(mut self, path: &str, methods: Methods) -> Self {
        self.served
            .extend(methods.methods.into_iter().map(|method| ServedRoute {
                method,
                path: path.to_owned(),
            }));
        self.router = self.router.route(path, methods.router);
        self
    }

    pub fn merge(mut self, other: RouteTable) -> Self {
        self.served.extend(other.served);
        self.router = self.router.merge(other.router);
        self
    }

    /// Applies layers (or anything else that adds no route) to the routes registered so far.
    pub fn map_router(
        mut self,
        layer: impl FnOnce(Router<CoreClient>) -> Router<CoreClient>,
    ) -> Self {
        self.router = layer(self.router);
        self
    }

    pub fn into_router(self) -> Router<CoreClient> {
        self.router
    }

    /// Every (method, path) registered, sorted.
    pub fn served(&self) -> Vec<ServedRoute> {
        let mut served = self.served.clone();
        served.sort();
        served
    }
}
