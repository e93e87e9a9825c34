"""``make bench``: the gateway's job path measured side by side with the S3 floor and the straightforward Dask approach."""
