from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("shop", "0001_initial")]

    operations = [
        migrations.AlterField(
            model_name="book",
            name="price",
            field=models.DecimalField(db_index=True, decimal_places=2, max_digits=8),
        ),
    ]
