import asyncio

from changegate.policy.app import main

asyncio.run(main())
