"""The bodies of Banana's v4 calls, as its SDKs send them."""

from pydantic import BaseModel, ConfigDict, StrictBool, StrictStr


class StartBody(BaseModel):
    model_config = ConfigDict(extra="ignore")  # Banana's SDKs also send id and created

    apiKey: StrictStr | None = None  # or as a header: Authorization: Bearer KEY
    modelKey: StrictStr
    modelInputs: dict
    startOnly: StrictBool = False
    webhook: StrictStr | None = None


class CheckBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    apiKey: StrictStr | None = None
    callID: StrictStr
    longPoll: StrictBool = False
