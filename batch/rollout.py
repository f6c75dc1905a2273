"""Rolling the API onto a newly published model, in-cluster, through the official Kubernetes client
(the job's Role may get and patch the one API Deployment; no kubectl in the image)."""
from __future__ import annotations

import logging
from dataclasses import dataclass

from fuserank.config import environment
from fuserank.errors import NightlyError

log = logging.getLogger("fuserank.nightly")

MODEL_ANNOTATION = "fuserank.io/model-version"


@dataclass(frozen=True)
class RestartTarget:
    namespace: str
    deployment: str

    @classmethod
    def parse(cls, text: str, default_namespace: str | None = None) -> "RestartTarget":
        """``[NAMESPACE/]DEPLOYMENT``; the namespace defaults to the pod's own ($POD_NAMESPACE)."""
        namespace, sep, name = text.rpartition("/")
        namespace = namespace if sep else (default_namespace or environment().pod_namespace)
        if not name or not namespace:
            raise NightlyError(f"restart target {text!r}: expected [NAMESPACE/]DEPLOYMENT")
        return cls(namespace, name)


def restart_deployment(target: RestartTarget, model_version: str, configuration=None) -> None:
    """Stamp ``model_version`` on the Deployment's pod template (a strategic-merge patch, what ``kubectl
    rollout restart`` does with a timestamp). Idempotent: an unchanged value rolls nothing, so a retried
    night may call it again. ``configuration``: a kubernetes.client.Configuration; default: the pod's
    service account (``load_incluster_config``)."""
    import kubernetes       # the batch image's; the API image, which imports the nightly CLI, has none
    from urllib3.exceptions import HTTPError

    where = f"deployment {target.namespace}/{target.deployment}"
    body = {"spec": {"template": {"metadata": {"annotations": {MODEL_ANNOTATION: model_version}}}}}
    try:
        if configuration is None:
            configuration = kubernetes.client.Configuration()
            kubernetes.config.load_incluster_config(client_configuration=configuration)
        with kubernetes.client.ApiClient(configuration) as api:
            kubernetes.client.AppsV1Api(api).patch_namespaced_deployment(
                target.deployment, target.namespace, body, _request_timeout=30,
                _content_type="application/strategic-merge-patch+json")
    except (kubernetes.client.ApiException, kubernetes.config.ConfigException, HTTPError) as exc:
        raise NightlyError(f"rolling {where} onto model {model_version}: {exc}") from None
    log.info("%s set to model %s (pods roll if it changed)", where, model_version)
