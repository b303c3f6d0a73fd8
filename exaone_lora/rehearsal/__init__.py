"""`exaone-lora rehearse`: the Azure path a user takes, run on this machine against stand-ins for Azure."""
