"""The expose stage: the web tier, its API and pages, feeds, exports, webhooks, CI health."""
