"""The HTTP door's parts, one concern per module: `errors` (the one error shape and its
handlers), `json_body` (reading a request body), `negotiation` (JSON or a page, from Accept),
`bundles` (the intake and bundle routes), `operator` (console, metrics, health). The app is
assembled in `vip_bundles/api.py`; who may call it is `vip_bundles/guard/`."""
