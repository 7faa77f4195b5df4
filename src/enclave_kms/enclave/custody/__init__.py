"""Custody of the storage root key across replicas and upgrades (DESIGN §14, issue 18).

`replica_policy` is the installation's rule for which builds may hold the key; `handover` is
the wire format of the attested join (pure functions); `peer` answers joins on a running
replica; `joiner` obtains the key on a new CPU or a new version and seals it there.
"""
