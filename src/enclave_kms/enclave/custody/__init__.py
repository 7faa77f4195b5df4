"""Custody of the storage root key across replicas, upgrades and total loss (DESIGN §14,
issue 18).

`replica_policy` is the installation's rule for which builds may hold the key; `handover` is
the wire format of the attested join (pure functions); `peer` answers joins on a running
replica; `joiner` obtains the key on a new CPU or a new version and seals it there; `shares`
and `recovery` are the k-of-n split and the recovery session, the last resort.
"""
