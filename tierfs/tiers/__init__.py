"""Cache tiers (RAM, disk with an LMDB index) and the chain that orders them."""
