import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { Match } from 'aws-cdk-lib/assertions';

import { VPC_CIDR } from '../lib/sluice-stack';
import { logicalId, onlyResourceOfType, resourcesOfType, synthMain } from './helpers';

describe('network', () => {
  const { stack, template, json } = synthMain();

  it('is one VPC 10.0.0.0/16 with isolated subnets only, two zones', () => {
    assert.equal(VPC_CIDR, '10.0.0.0/16');
    template.hasResourceProperties('AWS::EC2::VPC', { CidrBlock: '10.0.0.0/16' });
    template.resourceCountIs('AWS::EC2::VPC', 1);
    const subnets = resourcesOfType(json, 'AWS::EC2::Subnet');
    assert.equal(subnets.length, 2);
    for (const [, subnet] of subnets) {
      assert.equal(subnet.Properties.MapPublicIpOnLaunch, false);
      const tags = Object.fromEntries(
        (subnet.Properties.Tags as { Key: string; Value: string }[]).map((t) => [t.Key, t.Value]),
      );
      assert.equal(tags['aws-cdk:subnet-type'], 'Isolated');
    }
    // Two different zones.
    const zones = subnets.map(([, s]) => JSON.stringify(s.Properties.AvailabilityZone));
    assert.equal(new Set(zones).size, 2);
    assert.equal(stack.vpc.isolatedSubnets.length, 2);
    assert.equal(stack.vpc.publicSubnets.length, 0);
    assert.equal(stack.vpc.privateSubnets.length, 0);
  });

  it('has no way to the internet: no gateway, NAT, or default route', () => {
    for (const type of [
      'AWS::EC2::InternetGateway',
      'AWS::EC2::VPCGatewayAttachment',
      'AWS::EC2::NatGateway',
      'AWS::EC2::EIP',
      'AWS::EC2::EgressOnlyInternetGateway',
      'AWS::EC2::TransitGatewayAttachment',
    ]) {
      template.resourceCountIs(type, 0);
    }
    template.resourceCountIs('AWS::EC2::Route', 0);
  });

  it('has exactly the endpoints the isolated subnets need', () => {
    const services = resourcesOfType(json, 'AWS::EC2::VPCEndpoint').map(([, e]) => ({
      service: JSON.stringify(e.Properties.ServiceName),
      type: e.Properties.VpcEndpointType,
    }));
    const expected = [
      { name: 'secretsmanager', type: 'Interface' },
      { name: 'kms', type: 'Interface' },
      { name: 'ecr.api', type: 'Interface' },
      { name: 'ecr.dkr', type: 'Interface' },
      { name: 'logs', type: 'Interface' },
      { name: 's3', type: 'Gateway' },
    ];
    assert.equal(services.length, expected.length, JSON.stringify(services));
    for (const { name, type } of expected) {
      const matching = services.filter(
        (s) => s.type === type && s.service.includes(`.${name}"`) && !s.service.includes('fips'),
      );
      assert.equal(
        matching.length,
        1,
        `one ${type} endpoint for ${name}: ${JSON.stringify(services)}`,
      );
    }
  });

  it('puts interface endpoints in the isolated subnets, with private DNS and their own group', () => {
    const endpointGroup = logicalId(stack.endpointSecurityGroup);
    const subnetRefs = stack.vpc.isolatedSubnets.map((s) => ({ Ref: logicalId(s) }));
    const interfaces = resourcesOfType(json, 'AWS::EC2::VPCEndpoint').filter(
      ([, e]) => e.Properties.VpcEndpointType === 'Interface',
    );
    assert.equal(interfaces.length, 5);
    for (const [, e] of interfaces) {
      assert.equal(e.Properties.PrivateDnsEnabled, true);
      assert.deepEqual(e.Properties.SecurityGroupIds, [
        { 'Fn::GetAtt': [endpointGroup, 'GroupId'] },
      ]);
      assert.deepEqual(
        [...e.Properties.SubnetIds].map((s) => JSON.stringify(s)).sort(),
        subnetRefs.map((s) => JSON.stringify(s)).sort(),
      );
    }
    template.hasResourceProperties('AWS::EC2::VPCEndpoint', {
      VpcEndpointType: 'Gateway',
      RouteTableIds: Match.anyValue(),
    });
  });

  it('logs the VPC traffic', () => {
    template.hasResourceProperties('AWS::EC2::FlowLog', {
      ResourceType: 'VPC',
      TrafficType: 'ALL',
      LogDestinationType: 'cloud-watch-logs',
    });
  });

  it('spreads over explicit zones when given more than two', () => {
    const three = synthMain({ availabilityZones: ['eu-west-1a', 'eu-west-1b', 'eu-west-1c'] }, {});
    assert.equal(resourcesOfType(three.json, 'AWS::EC2::Subnet').length, 3);
    const zones = resourcesOfType(three.json, 'AWS::EC2::Subnet')
      .map(([, s]) => s.Properties.AvailabilityZone)
      .sort();
    assert.deepEqual(zones, ['eu-west-1a', 'eu-west-1b', 'eu-west-1c']);
  });

  it('refuses more than two zones in an environment-agnostic stack, naming the fix', () => {
    assert.throws(
      () => synthMain({ azCount: 3 }),
      /azCount=3 needs a stack with a concrete region/,
    );
  });

  it('spreads over three zones with a concrete region', () => {
    const three = synthMain(
      { azCount: 3, env: { account: '123456789012', region: 'eu-west-1' } },
      {
        'availability-zones:account=123456789012:region=eu-west-1': [
          'eu-west-1a',
          'eu-west-1b',
          'eu-west-1c',
        ],
      },
    );
    assert.equal(resourcesOfType(three.json, 'AWS::EC2::Subnet').length, 3);
  });

  it('keeps the default security group closed', () => {
    onlyResourceOfType(json, 'Custom::VpcRestrictDefaultSG');
  });
});
