import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import {
  egressRules,
  ingressRules,
  logicalId,
  onlyResourceOfType,
  securityGroupNames,
  synthMain,
  tcp,
} from './helpers';

describe('security group chain', () => {
  const { stack, json } = synthMain();
  const names = securityGroupNames(stack);

  it('admits exactly the chain Lambda -> NLB -> Sluice -> RDS and the endpoint traffic', () => {
    const expected = [
      // The chain on 3306.
      tcp('nlb', 'lambda', 3306),
      tcp('sluice', 'nlb', 3306),
      tcp('rds', 'sluice', 3306),
      // The NLB's health checks reach Sluice's HTTP port (GET /readyz): part of the chain.
      tcp('sluice', 'nlb', 9090),
      // The interface endpoints take HTTPS from the two workloads that call AWS APIs.
      tcp('endpoints', 'lambda', 443),
      tcp('endpoints', 'sluice', 443),
    ].sort((a, b) => JSON.stringify(a).localeCompare(JSON.stringify(b)));
    // Any other ingress anywhere in the template (another port, a CIDR, another group)
    // makes this list differ.
    assert.deepEqual(ingressRules(json, names), expected);
  });

  it('lets nothing reach the Lambda or the database but the chain', () => {
    const rules = ingressRules(json, names);
    assert.deepEqual(
      rules.filter((r) => r.group === 'lambda'),
      [],
    );
    assert.deepEqual(
      rules.filter((r) => r.group === 'rds'),
      [tcp('rds', 'sluice', 3306)],
    );
    assert.equal(
      rules.some((r) => r.peer.includes('/')),
      false,
      'no ingress from an address range',
    );
  });

  it('limits what each group may send', () => {
    const expected = [
      tcp('lambda', 'nlb', 3306),
      tcp('lambda', 'endpoints', 443),
      tcp('nlb', 'sluice', 3306),
      tcp('nlb', 'sluice', 9090),
      tcp('sluice', 'rds', 3306),
      // S3 (image layers, via the gateway endpoint) has no security group to name; the
      // isolated subnets route nowhere else.
      tcp('sluice', '0.0.0.0/0', 443),
      // CDK's placeholder for "no egress at all" on the groups that send nothing.
      { group: 'endpoints', peer: '255.255.255.255/32', protocol: 'icmp', from: 252, to: 86 },
      { group: 'rds', peer: '255.255.255.255/32', protocol: 'icmp', from: 252, to: 86 },
    ].sort((a, b) => JSON.stringify(a).localeCompare(JSON.stringify(b)));
    assert.deepEqual(egressRules(json, names), expected);
  });

  it('attaches each group to its workload and nothing else', () => {
    const groupRef = (sg: Parameters<typeof logicalId>[0]) => [
      { 'Fn::GetAtt': [logicalId(sg), 'GroupId'] },
    ];
    const [, service] = onlyResourceOfType(json, 'AWS::ECS::Service');
    assert.deepEqual(
      service.Properties.NetworkConfiguration.AwsvpcConfiguration.SecurityGroups,
      groupRef(stack.sluiceSecurityGroup),
    );
    const [, nlb] = onlyResourceOfType(json, 'AWS::ElasticLoadBalancingV2::LoadBalancer');
    assert.deepEqual(nlb.Properties.SecurityGroups, groupRef(stack.loadBalancerSecurityGroup));
    const [, db] = onlyResourceOfType(json, 'AWS::RDS::DBInstance');
    assert.deepEqual(db.Properties.VPCSecurityGroups, groupRef(stack.databaseSecurityGroup));
    const fn = json.Resources[logicalId(stack.function)]!;
    assert.deepEqual(fn.Properties.VpcConfig.SecurityGroupIds, groupRef(stack.lambdaSecurityGroup));
  });

  it('sends NLB traffic from the NLB itself, so the Sluice group can name the NLB group', () => {
    const [, tg] = onlyResourceOfType(json, 'AWS::ElasticLoadBalancingV2::TargetGroup');
    const attributes = Object.fromEntries(
      (tg.Properties.TargetGroupAttributes as { Key: string; Value: string }[]).map((a) => [
        a.Key,
        a.Value,
      ]),
    );
    assert.equal(attributes['preserve_client_ip.enabled'], 'false');
    assert.equal(tg.Properties.TargetType, 'ip');
  });
});
