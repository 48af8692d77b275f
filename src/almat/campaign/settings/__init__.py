"""The settings of a campaign, one module per kind (``md``, ``pool``, ``nft``) and what they share
(``common``). Pure data: no file or store I/O and no Makers (``almat.campaign.sources`` reads structures,
``almat.campaign.flow`` builds the Makers); validating a campaign file imports no torch."""
