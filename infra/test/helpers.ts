/**
 * Shared by the tests: builds the stacks the way bin/app.ts does, with the feature flags from
 * cdk.json, a stub Lambda package and an injected image, so no test needs Docker or the
 * Lambda cross-compile.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { App, CfnElement, Stack, Validations } from 'aws-cdk-lib';
import { Template } from 'aws-cdk-lib/assertions';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as ecs from 'aws-cdk-lib/aws-ecs';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import { AwsSolutionsChecks } from 'cdk-nag';
import { IConstruct } from 'constructs';

import { SluiceStack, SluiceStackProps } from '../lib/sluice-stack';

export const INFRA_DIR = path.resolve(__dirname, '..');

/** The feature flags the real app runs with. */
export function cdkJsonContext(): Record<string, unknown> {
  const cdkJson = JSON.parse(fs.readFileSync(path.join(INFRA_DIR, 'cdk.json'), 'utf8')) as {
    context: Record<string, unknown>;
  };
  return cdkJson.context;
}

export function newApp(extraContext: Record<string, unknown> = {}): App {
  return new App({ context: { ...cdkJsonContext(), ...extraContext } });
}

let stubDir: string | undefined;
/** A directory with a `bootstrap` file: what a provided.al2023 package looks like. */
export function stubFunctionDir(): string {
  if (stubDir === undefined) {
    stubDir = fs.mkdtempSync(path.join(os.tmpdir(), 'sluice-fn-'));
    fs.writeFileSync(path.join(stubDir, 'bootstrap'), '#!/bin/sh\nexit 0\n', { mode: 0o755 });
  }
  return stubDir;
}

export function stubFunctionCode(): lambda.Code {
  return lambda.Code.fromAsset(stubFunctionDir());
}

export const TEST_IMAGE = 'example.com/sluice:test';

/**
 * The first bytes of an ELF executable for `machine` (183 is aarch64, 62 is x86_64), plus
 * `extra`: enough for the stack's checks of the binary, which is never run here.
 */
export function fakeElf(machine: number, extra = ''): Buffer {
  const header = Buffer.alloc(64);
  Buffer.from([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1]).copy(header);
  header.writeUInt16LE(2, 16); // ET_EXEC
  header.writeUInt16LE(machine, 18);
  return Buffer.concat([header, Buffer.from(extra, 'latin1')]);
}

let hostFilesDir: string | undefined;
/** Stand-ins for the aarch64 sluice binary and the RDS CA bundle the EC2 variant installs. */
export function stubHostFiles(): { sluiceBinary: string; rdsCaBundle: string } {
  if (hostFilesDir === undefined) {
    hostFilesDir = fs.mkdtempSync(path.join(os.tmpdir(), 'sluice-host-'));
    fs.writeFileSync(
      path.join(hostFilesDir, 'sluice'),
      fakeElf(183, '\0GLIBC_2.17\0GLIBC_2.34\0'),
      { mode: 0o755 },
    );
    fs.writeFileSync(
      path.join(hostFilesDir, 'rds-ca.pem'),
      '-----BEGIN CERTIFICATE-----\nstub\n-----END CERTIFICATE-----\n',
    );
  }
  return {
    sluiceBinary: path.join(hostFilesDir, 'sluice'),
    rdsCaBundle: path.join(hostFilesDir, 'rds-ca.pem'),
  };
}

export type MainProps = Partial<SluiceStackProps>;

export interface Synthesized {
  app: App;
  stack: SluiceStack;
  template: Template;
  json: TemplateJson;
}

export interface TemplateJson {
  Resources: Record<string, { Type: string; Properties?: any; DependsOn?: string[] }>;
  Outputs?: Record<string, { Value: unknown }>;
}

/** The main stack with the test image and the stub Lambda package, not yet synthesized. */
export function buildMain(
  props: MainProps = {},
  context: Record<string, unknown> = {},
): { app: App; stack: SluiceStack } {
  const app = newApp(context);
  const stack = new SluiceStack(app, 'Sluice', {
    sluiceImage: ecs.ContainerImage.fromRegistry(TEST_IMAGE),
    functionCode: stubFunctionCode(),
    ...props,
  });
  return { app, stack };
}

/** The main stack with Sluice on EC2 (hosting 'ec2') and stand-in host files, not synthesized. */
export function buildEc2(
  props: MainProps = {},
  context: Record<string, unknown> = {},
): { app: App; stack: SluiceStack } {
  const app = newApp(context);
  const stack = new SluiceStack(app, 'Sluice', {
    hosting: 'ec2',
    functionCode: stubFunctionCode(),
    ...stubHostFiles(),
    ...props,
  });
  return { app, stack };
}

/** The main stack with Sluice on EC2, synthesized. */
export function synthEc2(
  props: MainProps = {},
  context: Record<string, unknown> = {},
): Synthesized {
  const { app, stack } = buildEc2(props, context);
  const template = Template.fromStack(stack);
  return { app, stack, template, json: template.toJSON() as TemplateJson };
}

/** The main stack, synthesized. */
export function synthMain(
  props: MainProps = {},
  context: Record<string, unknown> = {},
): Synthesized {
  const { app, stack } = buildMain(props, context);
  const template = Template.fromStack(stack);
  return { app, stack, template, json: template.toJSON() as TemplateJson };
}

/** The logical ID CloudFormation knows a construct's resource by. */
export function logicalId(construct: IConstruct): string {
  const stack = Stack.of(construct);
  const cfn = (construct.node.defaultChild ?? construct) as CfnElement;
  return stack.getLogicalId(cfn);
}

export function resourcesOfType(json: TemplateJson, type: string): [string, any][] {
  return Object.entries(json.Resources).filter(([, r]) => r.Type === type);
}

export function onlyResourceOfType(json: TemplateJson, type: string): [string, any] {
  const found = resourcesOfType(json, type);
  if (found.length !== 1) {
    throw new Error(`expected exactly one ${type}, found ${found.length}`);
  }
  return found[0]!;
}

export const ref = (id: string) => ({ Ref: id });
export const getAtt = (id: string, attribute: string) => ({ 'Fn::GetAtt': [id, attribute] });

/** An ingress or egress rule, in a form that is easy to compare. */
export interface Rule {
  group: string;
  peer: string;
  protocol: string;
  from: number;
  to: number;
}

/** Names a security group reference by the given names of logical IDs, else prints it. */
function peerName(value: unknown, names: Record<string, string>): string {
  const json = JSON.stringify(value);
  for (const [id, name] of Object.entries(names)) {
    if (json === JSON.stringify(getAtt(id, 'GroupId'))) return name;
  }
  return json;
}

/**
 * Every ingress rule in a template, whether inline on an AWS::EC2::SecurityGroup or a
 * separate AWS::EC2::SecurityGroupIngress resource.
 */
export function ingressRules(json: TemplateJson, names: Record<string, string>): Rule[] {
  return collectRules(json, names, 'SecurityGroupIngress', 'AWS::EC2::SecurityGroupIngress');
}

export function egressRules(json: TemplateJson, names: Record<string, string>): Rule[] {
  return collectRules(json, names, 'SecurityGroupEgress', 'AWS::EC2::SecurityGroupEgress');
}

function collectRules(
  json: TemplateJson,
  names: Record<string, string>,
  inlineKey: string,
  resourceType: string,
): Rule[] {
  const rules: Rule[] = [];
  const peerOf = (p: any): string =>
    p.CidrIp ??
    p.CidrIpv6 ??
    p.SourcePrefixListId ??
    p.DestinationPrefixListId ??
    peerName(p.SourceSecurityGroupId ?? p.DestinationSecurityGroupId, names);
  for (const [id, resource] of Object.entries(json.Resources)) {
    if (resource.Type === 'AWS::EC2::SecurityGroup') {
      for (const p of resource.Properties?.[inlineKey] ?? []) {
        rules.push({
          group: names[id] ?? id,
          peer: peerOf(p),
          protocol: p.IpProtocol,
          from: p.FromPort,
          to: p.ToPort,
        });
      }
    } else if (resource.Type === resourceType) {
      const p = resource.Properties;
      rules.push({
        group: peerName(p.GroupId, names),
        peer: peerOf(p),
        protocol: p.IpProtocol,
        from: p.FromPort,
        to: p.ToPort,
      });
    }
  }
  return rules.sort((a, b) => JSON.stringify(a).localeCompare(JSON.stringify(b)));
}

export function tcp(group: string, peer: string, port: number): Rule {
  return { group, peer, protocol: 'tcp', from: port, to: port };
}

/** The names of the main stack's security groups, by logical ID. */
export function securityGroupNames(stack: SluiceStack): Record<string, string> {
  const groups: Record<string, ec2.SecurityGroup> = {
    lambda: stack.lambdaSecurityGroup,
    nlb: stack.loadBalancerSecurityGroup,
    sluice: stack.sluiceSecurityGroup,
    rds: stack.databaseSecurityGroup,
    endpoints: stack.endpointSecurityGroup,
  };
  return Object.fromEntries(Object.entries(groups).map(([name, sg]) => [logicalId(sg), name]));
}

/**
 * Every statement of every identity policy: AWS::IAM::Policy resources and the inline policies
 * of AWS::IAM::Role resources, each with the policy's logical ID and the roles it applies to.
 */
export function policyStatements(
  json: TemplateJson,
): { policy: string; roles: unknown[]; statement: any }[] {
  const out: { policy: string; roles: unknown[]; statement: any }[] = [];
  for (const [id, policy] of resourcesOfType(json, 'AWS::IAM::Policy')) {
    for (const statement of policy.Properties.PolicyDocument.Statement) {
      out.push({ policy: id, roles: policy.Properties.Roles ?? [], statement });
    }
  }
  for (const [id, role] of resourcesOfType(json, 'AWS::IAM::Role')) {
    for (const inline of role.Properties.Policies ?? []) {
      for (const statement of inline.PolicyDocument.Statement) {
        out.push({ policy: `${id}/${inline.PolicyName}`, roles: [ref(id)], statement });
      }
    }
  }
  return out;
}

export const asArray = <T>(value: T | T[]): T[] => (Array.isArray(value) ? value : [value]);

/** cdk-nag's AwsSolutions findings in `scope`, as "rule: construct paths". */
export function findings(scope: IConstruct): string[] {
  const report = new AwsSolutionsChecks().validateScope(scope);
  return report.violations.map(
    (v) => `${v.ruleName}: ${v.violatingResources.map((r) => r.constructPath).join(', ')}`,
  );
}

/** Every acknowledgement recorded in the tree: rule id and reason. */
export function acknowledgements(
  scope: IConstruct,
): { path: string; id: string; reason: string }[] {
  return scope.node.findAll().flatMap((c) =>
    c.node.metadata
      .filter((m) => m.type === Validations.ACKNOWLEDGED_RULES_METADATA_KEY)
      .flatMap((m) =>
        Object.entries(m.data as Record<string, string>).map(([id, reason]) => ({
          path: c.node.path,
          id,
          reason,
        })),
      ),
  );
}
