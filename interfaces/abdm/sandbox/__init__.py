"""ABDM sandbox simulator (gateway + consent manager + remote HIU and HIP): ``python -m interfaces.abdm.sandbox``."""
