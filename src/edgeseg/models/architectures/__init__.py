"""One module per architecture; importing this package registers them all."""

from edgeseg.models.architectures import (basic_encdec, dabnet, edanet, fcn_alexnet, jacintonet11_seg,  # noqa: F401
                                         lmsegnet_v1, swiftnet)
