#!/usr/bin/env node
/**
 * The CDK app: `npx cdk synth` (no AWS credentials needed) or `npx cdk deploy`.
 * Settings come from context; see lib/context.ts and infra/README.md.
 */

import { App, Validations } from 'aws-cdk-lib';
import { Platform } from 'aws-cdk-lib/aws-ecr-assets';
import * as ecs from 'aws-cdk-lib/aws-ecs';
import { AwsSolutionsChecks } from 'cdk-nag';

import {
  ContextReader,
  functionCodeFromContext,
  REPO_ROOT,
  sluiceHostFilesFromContext,
  stackSettingsFromContext,
} from '../lib/context';
import { SidecarExampleStack } from '../lib/sidecar-example-stack';
import { SluiceStack } from '../lib/sluice-stack';

const app = new App();
const ctx = new ContextReader(app.node);

// Built from the repository root, where the Cargo workspace is; .dockerignore keeps target/,
// node_modules and cdk.out out of the build context (CDK copies the context into cdk.out).
// Only built when a Fargate service or the sidecar example uses it.
const sluiceImage = ecs.ContainerImage.fromAsset(REPO_ROOT, {
  file: 'Dockerfile',
  platform: Platform.LINUX_ARM64,
});

// Environment-agnostic unless the CLI knows the account and region: synth needs no credentials.
const env =
  process.env.CDK_DEFAULT_ACCOUNT && process.env.CDK_DEFAULT_REGION
    ? { account: process.env.CDK_DEFAULT_ACCOUNT, region: process.env.CDK_DEFAULT_REGION }
    : undefined;

const settings = stackSettingsFromContext(app.node);
// sluiceHosting=ec2: an EC2 Auto Scaling group installs the aarch64 binary and the systemd
// unit instead of running the image (see lib/sluice-hosts.ts).
const onEc2 = settings.hosting === 'ec2';
for (const key of ['sluiceBinary', 'rdsCaBundle'] as const) {
  if (!onEc2 && ctx.string(key) !== undefined) {
    throw new Error(`context ${key}: only used with sluiceHosting=ec2`);
  }
}
const stack = new SluiceStack(app, ctx.string('stackName') ?? 'Sluice', {
  env,
  description: onEc2
    ? 'Sluice: MySQL proxy on EC2 Auto Scaling in front of RDS MySQL, with its demo Lambda'
    : 'Sluice: MySQL proxy on ECS Fargate in front of RDS MySQL, with its demo Lambda',
  ...(onEc2 ? sluiceHostFilesFromContext(app.node) : { sluiceImage }),
  functionCode: functionCodeFromContext(app.node),
  ...settings,
});

if (ctx.boolean('sidecarExample')) {
  const appRepositoryName = ctx.string('sidecarAppRepository');
  if (appRepositoryName === undefined) {
    throw new Error(
      'sidecarExample=true needs -c sidecarAppRepository=NAME (an ECR repository in the ' +
        'target account and region) and optionally -c sidecarAppTag=TAG (default latest)',
    );
  }
  new SidecarExampleStack(app, `${stack.stackName}SidecarExample`, {
    env,
    vpc: stack.vpc,
    database: stack.database,
    databaseSecurityGroup: stack.databaseSecurityGroup,
    endpointSecurityGroup: stack.endpointSecurityGroup,
    secret: stack.secret,
    sluiceImage,
    appRepositoryName,
    appImageTag: ctx.string('sidecarAppTag') ?? 'latest',
  });
}

// cdk-nag's AwsSolutions rules run on every synth; a finding without a reasoned
// acknowledgement fails it.
Validations.of(app).addPlugins(new AwsSolutionsChecks(app));
