"""The jobs built on the library: the reproduction of the paper (:mod:`.repro`) and the side-by-side comparison
of exposure-bias fixes (:mod:`.compare`), their shared configuration and claims; :mod:`.report` only renders."""
