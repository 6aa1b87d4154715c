import sys

from bert_common.cli import main

sys.exit(main())
