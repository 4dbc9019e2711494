//! The human's page, as the node serves it (the server itself is `crate::web`).

use std::sync::Arc;

use super::Node;
use crate::api::PageView;
use crate::error::ServiceError;
use crate::web::{self, Site};

impl Node {
    /// The page server, started on `[web] listen` if it is not running yet.
    pub async fn page(&self) -> Result<Arc<Site>, ServiceError> {
        let mut slot = self.0.web.lock().await;
        if let Some(site) = slot.as_ref() {
            return Ok(site.clone());
        }
        let user = self
            .0
            .user
            .get()
            .cloned()
            .ok_or_else(|| ServiceError::unavailable("the node is still starting; try again"))?;
        let site = web::start(self.clone(), user, self.0.config.web.listen, self.0.shutdown.clone())
            .await
            .map_err(|e| ServiceError::unavailable(e.to_string()))?;
        *slot = Some(site.clone());
        Ok(site)
    }

    /// `mesh open`: the page served, and a one-time login address for it.
    pub async fn open_page(&self) -> Result<PageView, ServiceError> {
        let site = self.page().await?;
        Ok(PageView {
            url: site.url(),
            login_url: site.login_url(),
        })
    }
}
