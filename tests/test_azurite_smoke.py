from azure.storage.blob import ContainerClient


def test_blob_round_trip(container: ContainerClient) -> None:
    container.upload_blob("a/b.csv", b"email\nx@example.com\n")
    assert container.download_blob("a/b.csv").readall() == b"email\nx@example.com\n"
