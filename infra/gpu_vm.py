"""The GPU VM(s): Ubuntu 24.04, SSH key only, premium OS disk, encryption at host, user-assigned identity, and
a Premium SSD data disk per VM for /data (model, adapters, compile caches), attached at LUN 0 of the SCSI
controller, which Azure's udev rules name /dev/disk/azure/scsi1/lun0 on the host (bootstrap formats and mounts it).

prod-large (node_count > 1) puts the VMs behind a Standard load balancer that probes the gateway's /health.
"""

from __future__ import annotations

import functools
import hashlib

import pulumi
from pulumi_azure_native import compute, network

from exaone_lora.spec import DeploymentSpec
from infra.common import COMPONENT_PREFIX, prefix

UBUNTU_2404 = {"publisher": "Canonical", "offer": "ubuntu-24_04-lts", "sku": "server", "version": "latest"}
LB_POOL = "vllm-replicas"
LB_FRONTEND = "api"
LB_PROBE = "gateway-health"
DATA_DISK_LUN = 0
# What the host sees for LUN 0 (Azure's udev rules, walinuxagent / azure-vm-utils): bootstrap mounts it on /data.
DATA_DISK_DEVICE = f"/dev/disk/azure/scsi1/lun{DATA_DISK_LUN}"


def dns_label(spec: DeploymentSpec, subscription_id: str, *, index: int) -> str:
    """Public DNS labels are unique per region across all of Azure: salt with the subscription."""
    salt = hashlib.sha256(subscription_id.encode()).hexdigest()[:6]
    return f"{prefix(spec)}-{index}-{salt}"


# What a preview shows before the operator's key is set; `pulumi up` refuses such a stack (infra.common.check_deployable).
UNSET_SSH_KEY = "<exaone-lora:sshPublicKey not set>"


def ssh_key(spec: DeploymentSpec) -> str:
    return spec.ssh_public_key or UNSET_SSH_KEY


class GpuVms(pulumi.ComponentResource):
    vms: list[compute.VirtualMachine]
    public_ips: list[network.PublicIPAddress]
    nics: list[network.NetworkInterface]
    data_disks: list[compute.Disk]
    load_balancer: network.LoadBalancer | None
    lb_ip: pulumi.Output[str] | None

    def __init__(self, name: str, spec: DeploymentSpec, *, resource_group_name: pulumi.Input[str],
                 subnet_id: pulumi.Input[str], nsg_id: pulumi.Input[str], identity_id: pulumi.Input[str],
                 subscription_id: pulumi.Output[str], opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(f"{COMPONENT_PREFIX}:infra:GpuVms", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        tags = spec.resource_tags()
        key = ssh_key(spec)
        rg = resource_group_name
        self.load_balancer = None
        self.lb_ip = None
        pool_ids: list[pulumi.Input[str]] = []
        if spec.node_count > 1:
            self.load_balancer, pool_id = self._load_balancer(spec, rg, subnet_id, subscription_id, child)
            pool_ids = [pool_id]

        self.vms, self.public_ips, self.nics, self.data_disks = [], [], [], []
        for i in range(spec.node_count):
            # A static public IP per VM so the operator (and Fabric) can SSH in; the NSG limits it to operatorCidr.
            ip = network.PublicIPAddress(
                f"pip-{i}", resource_group_name=rg, location=spec.region, tags=tags,
                public_ip_allocation_method="Static", sku=network.PublicIPAddressSkuArgs(name="Standard"),
                dns_settings=network.PublicIPAddressDnsSettingsArgs(
                    domain_name_label=subscription_id.apply(functools.partial(dns_label, spec, index=i))),
                opts=child)
            nic = network.NetworkInterface(
                f"nic-{i}", resource_group_name=rg, location=spec.region, tags=tags,
                network_security_group=network.NetworkSecurityGroupArgs(id=nsg_id),
                ip_configurations=[network.NetworkInterfaceIPConfigurationArgs(
                    name="primary", primary=True, subnet=network.SubnetArgs(id=subnet_id),
                    private_ip_allocation_method="Dynamic", public_ip_address=network.PublicIPAddressArgs(id=ip.id),
                    load_balancer_backend_address_pools=[network.BackendAddressPoolArgs(id=p) for p in pool_ids] or None,
                )],
                opts=child)
            vm_name = f"vm-{prefix(spec)}-{i}"
            # A disk of its own, so /data (a downloaded model, compile caches) outlives a replaced VM.
            data_disk = compute.Disk(
                f"data-{i}", resource_group_name=rg, location=spec.region, tags=tags, disk_name=f"{vm_name}-data",
                sku=compute.DiskSkuArgs(name="Premium_LRS"), disk_size_gb=spec.data_disk_gb,
                creation_data=compute.CreationDataArgs(create_option="Empty"),
                # No SAS export or import of the disk from any network.
                network_access_policy="DenyAll", public_network_access="Disabled", opts=child)
            vm = compute.VirtualMachine(
                f"vm-{i}", resource_group_name=rg, location=spec.region, tags=tags, vm_name=vm_name,
                hardware_profile=compute.HardwareProfileArgs(vm_size=spec.vm_sku),
                storage_profile=compute.StorageProfileArgs(
                    image_reference=compute.ImageReferenceArgs(**UBUNTU_2404),
                    os_disk=compute.OSDiskArgs(
                        create_option="FromImage", caching=compute.CachingTypes.READ_WRITE, disk_size_gb=spec.os_disk_gb,
                        delete_option="Delete",
                        managed_disk=compute.ManagedDiskParametersArgs(storage_account_type="Premium_LRS")),
                    # SCSI, said explicitly: the host-side path /dev/disk/azure/scsi1/lun0 depends on it.
                    disk_controller_type="SCSI",
                    data_disks=[compute.DataDiskArgs(
                        lun=DATA_DISK_LUN, create_option="Attach", caching=compute.CachingTypes.READ_ONLY,
                        delete_option="Detach", managed_disk=compute.ManagedDiskParametersArgs(id=data_disk.id))],
                ),
                os_profile=compute.OSProfileArgs(
                    computer_name=vm_name, admin_username=spec.admin_username,
                    linux_configuration=compute.LinuxConfigurationArgs(
                        disable_password_authentication=True,
                        ssh=compute.SshConfigurationArgs(public_keys=[compute.SshPublicKeyArgs(
                            key_data=key, path=f"/home/{spec.admin_username}/.ssh/authorized_keys")]),
                    ),
                ),
                network_profile=compute.NetworkProfileArgs(network_interfaces=[
                    compute.NetworkInterfaceReferenceArgs(id=nic.id, primary=True, delete_option="Delete")]),
                # Model weights, adapters and compile caches sit on host disks: encrypt them at the host too.
                security_profile=compute.SecurityProfileArgs(encryption_at_host=True),
                identity=compute.VirtualMachineIdentityArgs(
                    type=compute.ResourceIdentityType.USER_ASSIGNED, user_assigned_identities=[identity_id]),
                opts=child)
            self.public_ips.append(ip)
            self.nics.append(nic)
            self.data_disks.append(data_disk)
            self.vms.append(vm)
        self.register_outputs({"vmNames": [vm.name for vm in self.vms]})

    def _load_balancer(self, spec: DeploymentSpec, rg: pulumi.Input[str], subnet_id: pulumi.Input[str],
                       subscription_id: pulumi.Output[str], child: pulumi.ResourceOptions
                       ) -> tuple[network.LoadBalancer, pulumi.Output[str]]:
        lb_name = f"lb-{prefix(spec)}"
        # Sub-resources of an inline load balancer refer to each other by id, known from the names up front.
        base = pulumi.Output.all(subscription_id, rg).apply(
            lambda a: f"/subscriptions/{a[0]}/resourceGroups/{a[1]}/providers/Microsoft.Network/loadBalancers/{lb_name}")
        if spec.api.exposure == "public":
            front_ip = network.PublicIPAddress(
                "pip-lb", resource_group_name=rg, location=spec.region, tags=spec.resource_tags(),
                public_ip_allocation_method="Static", sku=network.PublicIPAddressSkuArgs(name="Standard"), opts=child)
            frontend = network.FrontendIPConfigurationArgs(
                name=LB_FRONTEND, public_ip_address=network.PublicIPAddressArgs(id=front_ip.id))
            self.lb_ip = front_ip.ip_address.apply(lambda v: v or "")
        else:
            # Private API: an internal load balancer inside the subnet, reachable over peering/VPN only.
            frontend = network.FrontendIPConfigurationArgs(
                name=LB_FRONTEND, subnet=network.SubnetArgs(id=subnet_id), private_ip_allocation_method="Dynamic")
        lb = network.LoadBalancer(
            "lb", resource_group_name=rg, location=spec.region, tags=spec.resource_tags(), load_balancer_name=lb_name,
            sku=network.LoadBalancerSkuArgs(name="Standard", tier="Regional"),
            frontend_ip_configurations=[frontend],
            backend_address_pools=[network.BackendAddressPoolArgs(name=LB_POOL)],
            probes=[network.ProbeArgs(
                name=LB_PROBE, protocol="Http", port=spec.port, request_path="/health",
                interval_in_seconds=5, probe_threshold=2)],
            load_balancing_rules=[network.LoadBalancingRuleArgs(
                name="api", protocol="Tcp", frontend_port=spec.port, backend_port=spec.port,
                idle_timeout_in_minutes=30, enable_tcp_reset=True, disable_outbound_snat=True,
                frontend_ip_configuration=network.SubResourceArgs(
                    id=base.apply(lambda b: f"{b}/frontendIPConfigurations/{LB_FRONTEND}")),
                backend_address_pool=network.SubResourceArgs(id=base.apply(lambda b: f"{b}/backendAddressPools/{LB_POOL}")),
                probe=network.SubResourceArgs(id=base.apply(lambda b: f"{b}/probes/{LB_PROBE}")),
            )],
            opts=child)
        if self.lb_ip is None:
            self.lb_ip = lb.frontend_ip_configurations.apply(
                lambda fs: (fs[0].private_ip_address or "") if fs else "")
        return lb, base.apply(lambda b: f"{b}/backendAddressPools/{LB_POOL}")
